//! Service configuration: built-in defaults, an optional TOML file, `RTPVISOR_*` environment
//! variables and CLI flags, merged in that order of precedence and validated once at startup.
//!
//! This module owns the name of every setting in each source (file key, environment variable,
//! flag), parsing and validation of the values, and the one-line errors that say which setting was
//! bad and where the bad value came from. Its only IO is reading files named by settings: the
//! config file in [`Config::load`], and the secret and CA files (`ari.password_file`,
//! `http.token_file`, `ari.ca_file`) once every source is merged; it never reads the process
//! environment itself (the caller passes a lookup), so tests inject their own environment.
//!
//! Secrets (the ARI password, the API token) are held in [`Secret`] (a `secrecy::SecretString`):
//! `Debug`, serialization (`--print-config`) and every error message show [`REDACTED`] or
//! `(hidden)`, never the value.
//!
//! Every source goes through the same string parser per setting ([`Config::set`]), so a value is
//! judged the same way wherever it was written and the messages are uniform.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use secrecy::{ExposeSecret, SecretString};
use rtpvisor_actors::echo_guard::AllowList;
use serde::{Serialize, Serializer};

/// What a secret serializes as, so `--print-config` never shows it.
pub const REDACTED: &str = "***";

/// The development password of `asterisk-conf/ari.conf`, refused toward a non-loopback ARI host
/// unless `ari.allow_dev_password`.
pub const DEV_PASSWORD: &str = "rtpvisor";

/// Shortest API token accepted: a guessable token protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;

/// A secret setting (the ARI password, the API token). The value lives in a
/// `secrecy::SecretString` (zeroed on drop); `Debug` and serialization show [`REDACTED`].
/// Equality compares the values, for tests of the configuration.
#[derive(Clone)]
pub struct Secret {
    value: SecretString,
    /// Read from a `*_file` setting: then `--print-config` leaves the value out and shows the
    /// file setting, so the printed configuration reads the same file back.
    from_file: bool,
}

impl Secret {
    pub fn new(value: &str) -> Self {
        Secret { value: SecretString::from(value.to_owned()), from_file: false }
    }

    fn read_from_file(value: &str) -> Self {
        Secret { value: SecretString::from(value.to_owned()), from_file: true }
    }

    /// The value, for the one place that must send it (an `Authorization` header, a compare).
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    /// A copy in secrecy's own type, for the actor system's settings.
    pub fn to_secret_string(&self) -> SecretString {
        SecretString::from(self.expose().to_owned())
    }

    /// Whether the value came from a `*_file` setting.
    pub fn is_from_file(&self) -> bool {
        self.from_file
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose() && self.from_file == other.from_file
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// A token read from its file is not printed (the file setting is).
fn token_not_printed(token: &Option<Secret>) -> bool {
    token.as_ref().is_none_or(Secret::is_from_file)
}

/// Upper bound for most millisecond settings. Anything longer is almost certainly a unit mistake
/// (seconds typed as milliseconds times 1000), and would make shutdown or reconnects look hung.
const MAX_DURATION_MS: u64 = 600_000;

/// A call may legitimately sit on hold without media for a long time, so the no-media timeout
/// gets a looser bound than the other durations.
const MAX_NO_MEDIA_TIMEOUT_MS: u64 = 3_600_000;

/// A packet a minute late is lost, not late; a larger threshold is a unit mistake.
const MAX_LATE_MS: f64 = 60_000.0;

/// The probe timeout is bounded so a probe call cannot hold a port for long.
const PROBE_TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 1..=10_000;

/// Restart intensity bounds: at least one failure must be tolerable, and more than a thousand
/// restarts per window means the supervisor is hiding a crash loop.
const MAX_RESTARTS_RANGE: std::ops::RangeInclusive<u64> = 1..=1000;

/// Restart window bounds: shorter than 100 ms cannot see a crash loop, longer than the general
/// duration cap is a unit mistake.
const RESTART_WINDOW_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=MAX_DURATION_MS;

/// Media modes a call can run in; `media.default_mode` must be one of them.
/// Bound of the media engine's stall detection (and of every request to it).
const MEDIA_STALL_RANGE_MS: std::ops::RangeInclusive<u64> = 500..=60_000;

/// Per-source echo rate: 0 turns the limit off; ten million datagrams a second is beyond
/// what one thread reflects, so more is a typo.
const ECHO_RATE_RANGE: std::ops::RangeInclusive<u64> = 0..=10_000_000;
/// The token bucket holds at least one datagram, or nothing could ever be answered.
const ECHO_BURST_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000_000;
/// The echo reads at most `sys::MAX_DATAGRAM` bytes of a datagram; a limit above that could
/// not be told from a truncated one.
const ECHO_MAX_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1..=rtpvisor_actors::sys::MAX_DATAGRAM as u64;

/// Shared echo worker threads: at least one; more than 1024 is a typo.
const ECHO_WORKERS_RANGE: std::ops::RangeInclusive<u64> = 1..=1024;

/// One shared echo worker per core by default.
fn default_echo_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
}

pub const MEDIA_MODES: [&str; 3] = ["echo", "probe", "shared-echo"];

/// Environment variable naming the TOML file (same as `--config`).
pub const CONFIG_ENV: &str = "RTPVISOR_CONFIG";

/// A configuration problem that must stop startup. Every variant displays as one line naming the
/// setting and the source of the bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting's value is malformed, out of range or conflicts with another setting.
    #[error("invalid {given}: {reason}")]
    Invalid {
        /// Canonical name of the setting, as its TOML key (`media.rtp_ports`).
        setting: String,
        /// Where the value came from, as the operator wrote it: `RTPVISOR_RTP_PORTS="1-0"`,
        /// `--http-addr "abc"` or `media.rtp_ports in /etc/rtpvisor.toml`.
        given: String,
        /// Why it was refused.
        reason: String,
    },
    /// The config file could not be read.
    // The io::Error is part of the message rather than a `#[source]`, so an error-chain printer
    // (anyhow's `{:#}`) does not repeat it and the error stays one line.
    #[error("cannot read config file {path:?} (from {given_by}): {error}")]
    ReadFile {
        /// The path as given.
        path: String,
        /// `--config` or `RTPVISOR_CONFIG`.
        given_by: &'static str,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("invalid TOML in {origin} at line {line}, column {column}: {message}")]
    Syntax {
        /// The file path (or the origin passed to [`Config::from_toml_str`]).
        origin: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's description, flattened to one line.
        message: String,
    },
    /// The config file has a key this version does not know. Refused rather than ignored so a
    /// typo (`rtp_port`) cannot silently leave a default in place.
    #[error("unknown key {key} in {origin}; known keys here: {known}")]
    UnknownKey {
        /// Full dotted key (`media.rtp_port`).
        key: String,
        /// The file path (or the origin passed to [`Config::from_toml_str`]).
        origin: String,
        /// The keys accepted at that level, comma separated.
        known: String,
    },
}

/// The effective configuration of the service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// How to reach Asterisk's REST interface and which Stasis application we are.
    pub ari: AriConfig,
    /// Per-call RTP sockets and media timing.
    pub media: MediaConfig,
    /// The shared echo socket used by `shared-echo` calls.
    pub echo: EchoConfig,
    /// The HTTP API (status, metrics, config).
    pub http: HttpConfig,
    /// Restart intensity of supervised actors.
    pub supervision: SupervisionConfig,
    /// Test-only fault injection.
    pub faults: FaultsConfig,
    /// How long shutdown waits for calls to be torn down before giving up.
    pub shutdown_timeout_ms: u64,
}

/// Connection to Asterisk ARI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AriConfig {
    /// Base URL of ARI, `http://` or `https://`, without a trailing slash (and without
    /// credentials: those are refused in a URL, which ends up in logs).
    pub url: String,
    /// ARI user (HTTP basic auth; cannot contain ':').
    pub user: String,
    /// ARI password, or the content of `password_file`. Serialized as [`REDACTED`], left out
    /// when it came from the file.
    #[serde(skip_serializing_if = "Secret::is_from_file")]
    pub password: Secret,
    /// File holding the ARI password (a Docker secret); its trailing newline is dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Allow the development password toward a non-loopback ARI host (a private network that
    /// only the two containers share, as in docker-compose.yml).
    pub allow_dev_password: bool,
    /// PEM file with the CA certificate(s) that signed Asterisk's TLS certificate (`https://`
    /// only); unset: Mozilla's roots, compiled in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Stasis application name; it goes into the events URL and REST paths unescaped.
    pub app: String,
    /// First reconnect delay after the events WebSocket drops.
    pub reconnect_min_ms: u64,
    /// Cap of the exponential reconnect delay.
    pub reconnect_max_ms: u64,
    /// Timeout of one ARI REST request.
    pub request_timeout_ms: u64,
    /// How often the events WebSocket is pinged.
    pub ping_interval_ms: u64,
    /// The link is declared dead when a ping gets no answer (nor any other frame) this long.
    pub ping_timeout_ms: u64,
}

/// Per-call media sockets and timing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MediaConfig {
    /// Address Asterisk sends RTP to (IP or hostname), i.e. this host as Asterisk sees it.
    pub host: String,
    /// Local address the call sockets bind to.
    pub bind_ip: IpAddr,
    /// UDP ports leased to calls, inclusive.
    pub rtp_ports: PortRangeSetting,
    /// How long a released port rests before reuse, so stray packets of the old call do not
    /// land in the next one.
    pub quarantine_ms: u64,
    /// A packet arriving later than this behind its schedule counts as late.
    pub late_ms: f64,
    /// How long a probe call waits for its media before reporting failure.
    pub probe_timeout_ms: u64,
    /// Hang up a call that has received no media for this long; 0 turns it off.
    pub no_media_timeout_ms: u64,
    /// While the ARI link is down, end a call locally whose media stopped this long; 0 off.
    pub link_down_silence_ms: u64,
    /// Admission limit: concurrent calls of every mode together; 0 means the pool's size.
    pub max_calls: u32,
    /// Mode for calls that do not ask for one: one of [`MEDIA_MODES`].
    pub default_mode: String,
}

/// The shared echo socket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EchoConfig {
    /// Where the shared echo socket binds. Its port is also the port Asterisk is told to send
    /// shared-echo media to, so it cannot be 0.
    pub addr: SocketAddr,
    /// Address Asterisk uses to reach the echo port; `None` means `media.host`
    /// (see [`Config::echo_host`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Source networks the echo answers (CIDRs, comma-separated); anyone else gets nothing,
    /// so the echo cannot be used to reflect spoofed traffic at a third party.
    #[serde(serialize_with = "serialize_display")]
    pub allow: AllowList,
    /// Datagrams per second answered per source address and port; 0 turns the limit off.
    pub rate_pps: u32,
    /// Datagrams a source may send at once above its rate (the token bucket's size).
    pub burst: u32,
    /// Largest datagram answered, bytes.
    pub max_bytes: u32,
    /// Worker threads, each with its own socket on the port (SO_REUSEPORT); default: cores.
    pub workers: u32,
}

/// The HTTP API listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpConfig {
    /// Where the HTTP API listens (port 0: the OS picks one, handy in tests).
    pub addr: SocketAddr,
    /// Bearer token every route but `/health` and `/ready` requires; `None`: the API is open
    /// (a warning at start when `addr` is not loopback). Serialized as [`REDACTED`].
    #[serde(skip_serializing_if = "token_not_printed")]
    pub token: Option<Secret>,
    /// File holding the token (a Docker secret); its trailing newline is dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// Restart intensity, OTP style: how many actor failures (panics) are tolerated within a sliding
/// window before the service escalates instead of restarting again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SupervisionConfig {
    /// Failures tolerated within `window_ms`, 1..=1000.
    pub max_restarts: u32,
    /// Length of the window failures are counted in, ms, 100..=600000.
    pub window_ms: u64,
    /// The media engine is stalled (and the process escalates) when its loop has not turned
    /// for this long; also the bound on every request to it.
    pub media_stall_ms: u64,
}

/// Fault injection for tests; off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FaultsConfig {
    /// Whether the fault-injection HTTP routes (`/faults/...`) are served. Never in production.
    pub enabled: bool,
}

/// An inclusive UDP port range, written `10000-10100` or `10000` for a single port.
/// Valid ranges have `1 <= start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRangeSetting {
    /// First port, inclusive.
    pub start: u16,
    /// Last port, inclusive.
    pub end: u16,
}

impl PortRangeSetting {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    /// Number of ports in the range.
    pub fn len(&self) -> usize {
        usize::from(self.end) - usize::from(self.start) + 1
    }

    /// Always false for a validated range; present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }

    fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (start, end) = match raw.split_once('-') {
            Some((start, end)) => (start.trim(), end.trim()),
            None => (raw, raw),
        };
        let port = |text: &str| {
            text.parse::<u16>().map_err(|_| {
                format!("{text:?} is not a port number 1-65535; expected START-END or PORT")
            })
        };
        let range = PortRangeSetting {
            start: port(start)?,
            end: port(end)?,
        };
        if range.start == 0 {
            return Err("port 0 is not a real port (it asks the OS for any port)".into());
        }
        if range.start > range.end {
            return Err(format!("start {} is above end {}", range.start, range.end));
        }
        Ok(range)
    }
}

impl fmt::Display for PortRangeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

// Serialized in the same text form the file, env and CLI accept, so printed config parses back.
impl Serialize for PortRangeSetting {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn serialize_display<T: fmt::Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

impl Default for AriConfig {
    fn default() -> Self {
        AriConfig {
            url: "http://127.0.0.1:8088/ari".into(),
            user: "rtpvisor".into(),
            password: Secret::new(DEV_PASSWORD),
            password_file: None,
            allow_dev_password: false,
            ca_file: None,
            app: "rtpvisor".into(),
            reconnect_min_ms: 200,
            reconnect_max_ms: 5000,
            request_timeout_ms: 5000,
            ping_interval_ms: 5000,
            ping_timeout_ms: 5000,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            host: "127.0.0.1".into(),
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            rtp_ports: PortRangeSetting {
                start: 10000,
                end: 10100,
            },
            quarantine_ms: 2000,
            late_ms: 20.0,
            probe_timeout_ms: 2000,
            no_media_timeout_ms: 30_000,
            link_down_silence_ms: 5000,
            max_calls: 0,
            default_mode: "echo".into(),
        }
    }
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 4000)),
            host: None,
            // This host only: the other defaults (ari.url, media.host) assume Asterisk runs
            // here too; a deployment that moves Asterisk names its network (compose does).
            allow: AllowList::loopback(),
            // A call sends 50 packets/s: four times that, and two seconds' worth at once.
            rate_pps: 200,
            burst: 400,
            workers: default_echo_workers(),
            // An Ethernet MTU: RTP of a call is far smaller; more is not media.
            max_bytes: 1500,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9090)),
            token: None,
            token_file: None,
        }
    }
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            max_restarts: 5,
            window_ms: 10_000,
            media_stall_ms: 2000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ari: AriConfig::default(),
            media: MediaConfig::default(),
            echo: EchoConfig::default(),
            http: HttpConfig::default(),
            supervision: SupervisionConfig::default(),
            faults: FaultsConfig::default(),
            shutdown_timeout_ms: 5000,
        }
    }
}

/// Command line. Every value is taken as text and validated by [`Config::load`], so a bad flag
/// gets the same kind of message as a bad file key or environment variable.
// The RTPVISOR_* variables are deliberately not clap `env` attributes: then clap could not tell
// an error from the environment apart from one on the command line, and tests could not inject
// an environment.
#[derive(Debug, Clone, Default, PartialEq, clap::Parser)]
#[command(
    name = "rtpvisor",
    version,
    about = "Supervises Asterisk call media over ARI: per-call RTP ports, echo and probe media, latency metrics.",
    long_about = "Supervises Asterisk call media over ARI: per-call RTP ports, echo and probe media, latency metrics.\n\n\
                  Settings come from built-in defaults, then the TOML file (--config or RTPVISOR_CONFIG), \
                  then RTPVISOR_* environment variables, then these flags; later sources win."
)]
pub struct Cli {
    /// TOML config file; unknown keys are errors [default: none] [env: RTPVISOR_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,
    /// ARI base URL, http:// or https:// [default: http://127.0.0.1:8088/ari] [env: RTPVISOR_ARI_URL]
    #[arg(long, value_name = "URL")]
    pub ari_url: Option<String>,
    /// ARI user [default: rtpvisor] [env: RTPVISOR_ARI_USER]
    #[arg(long, value_name = "USER")]
    pub ari_user: Option<String>,
    /// ARI password; prefer the env var or file, flags are visible in `ps` [default: rtpvisor] [env: RTPVISOR_ARI_PASSWORD]
    #[arg(long, value_name = "PASSWORD")]
    pub ari_password: Option<CliSecret>,
    /// File holding the ARI password (e.g. a Docker secret), trailing newline dropped; excludes --ari-password [default: none] [env: RTPVISOR_ARI_PASSWORD_FILE]
    #[arg(long, value_name = "FILE")]
    pub ari_password_file: Option<String>,
    /// Allow the development password (rtpvisor) toward a non-loopback ARI host [default: false] [env: RTPVISOR_ARI_ALLOW_DEV_PASSWORD]
    #[arg(long, value_name = "BOOL")]
    pub ari_allow_dev_password: Option<String>,
    /// PEM file of the CA that signed Asterisk's certificate, for https:// ARI [default: none] [env: RTPVISOR_ARI_CA_FILE]
    #[arg(long, value_name = "FILE")]
    pub ari_ca_file: Option<String>,
    /// Stasis application name [default: rtpvisor] [env: RTPVISOR_ARI_APP]
    #[arg(long, value_name = "NAME")]
    pub ari_app: Option<String>,
    /// Timeout of one ARI REST request, 1-600000 ms [default: 5000] [env: RTPVISOR_ARI_REQUEST_TIMEOUT_MS]
    #[arg(long, value_name = "MS")]
    pub ari_request_timeout_ms: Option<String>,
    /// How often the ARI events WebSocket is pinged, 100-600000 ms [default: 5000] [env: RTPVISOR_ARI_PING_INTERVAL_MS]
    #[arg(long, value_name = "MS")]
    pub ari_ping_interval_ms: Option<String>,
    /// The ARI link is declared dead when a ping gets no answer within this, 100-600000 ms [default: 5000] [env: RTPVISOR_ARI_PING_TIMEOUT_MS]
    #[arg(long, value_name = "MS")]
    pub ari_ping_timeout_ms: Option<String>,
    /// Address Asterisk sends RTP to (IP or hostname of this host as Asterisk sees it) [default: 127.0.0.1] [env: RTPVISOR_MEDIA_HOST]
    #[arg(long, value_name = "HOST")]
    pub media_host: Option<String>,
    /// Local IP the per-call RTP sockets bind to [default: 0.0.0.0] [env: RTPVISOR_MEDIA_BIND_IP]
    #[arg(long, value_name = "IP")]
    pub media_bind_ip: Option<String>,
    /// UDP ports leased to calls, START-END inclusive or a single PORT [default: 10000-10100] [env: RTPVISOR_RTP_PORTS]
    #[arg(long, value_name = "START-END")]
    pub rtp_ports: Option<String>,
    /// How long a released port rests before reuse, ms [default: 2000] [env: RTPVISOR_QUARANTINE_MS]
    #[arg(long, value_name = "MS")]
    pub quarantine_ms: Option<String>,
    /// Lateness threshold for a packet, ms, above 0 [default: 20] [env: RTPVISOR_LATE_MS]
    #[arg(long, value_name = "MS")]
    pub late_ms: Option<String>,
    /// How long a probe packet may take to come back before it counts as lost, 1-10000 ms [default: 2000] [env: RTPVISOR_PROBE_TIMEOUT_MS]
    #[arg(long, value_name = "MS")]
    pub probe_timeout_ms: Option<String>,
    /// Hang up calls without media for this long, ms; 0 is off [default: 30000] [env: RTPVISOR_NO_MEDIA_TIMEOUT_MS]
    #[arg(long, value_name = "MS")]
    pub no_media_timeout_ms: Option<String>,
    /// While the ARI link is down, end calls locally whose media stopped for this long, ms; 0 is off [default: 5000] [env: RTPVISOR_LINK_DOWN_SILENCE_MS]
    #[arg(long, value_name = "MS")]
    pub link_down_silence_ms: Option<String>,
    /// Concurrent calls admitted, every mode counted; 0 means the port pool's size [default: 0] [env: RTPVISOR_MAX_CALLS]
    #[arg(long, value_name = "N")]
    pub max_calls: Option<String>,
    /// Media mode for calls that do not ask for one: echo, probe or shared-echo [default: echo] [env: RTPVISOR_DEFAULT_MODE]
    #[arg(long, value_name = "MODE")]
    pub default_mode: Option<String>,
    /// Bind address of the shared echo socket, IP:PORT [default: 0.0.0.0:4000] [env: RTPVISOR_ECHO_ADDR]
    #[arg(long, value_name = "IP:PORT")]
    pub echo_addr: Option<String>,
    /// Address Asterisk uses to reach the echo port [default: media.host] [env: RTPVISOR_ECHO_HOST]
    #[arg(long, value_name = "HOST")]
    pub echo_host: Option<String>,
    /// Source networks the echo answers, comma-separated CIDRs (IPv4 and IPv6) [default: 127.0.0.0/8,::1/128] [env: RTPVISOR_ECHO_ALLOW]
    #[arg(long, value_name = "CIDR,...")]
    pub echo_allow: Option<String>,
    /// Datagrams per second the echo answers per source (address and port), 0-10000000; 0 is no limit [default: 200] [env: RTPVISOR_ECHO_RATE_PPS]
    #[arg(long, value_name = "PPS")]
    pub echo_rate_pps: Option<String>,
    /// Datagrams a source may send at once above its rate, 1-10000000 [default: 400] [env: RTPVISOR_ECHO_BURST]
    #[arg(long, value_name = "N")]
    pub echo_burst: Option<String>,
    /// Largest datagram the echo answers, 1-2048 bytes [default: 1500] [env: RTPVISOR_ECHO_MAX_BYTES]
    #[arg(long, value_name = "BYTES")]
    pub echo_max_bytes: Option<String>,
    /// Shared echo worker threads, one socket each on the echo port, 1-1024 [default: number of cores] [env: RTPVISOR_ECHO_WORKERS]
    #[arg(long, value_name = "N")]
    pub echo_workers: Option<String>,
    /// Listen address of the HTTP API, IP:PORT [default: 0.0.0.0:9090] [env: RTPVISOR_HTTP_ADDR]
    #[arg(long, value_name = "IP:PORT")]
    pub http_addr: Option<String>,
    /// Bearer token required by every HTTP route but /health and /ready, at least 16 visible ASCII characters; prefer the env var or file [default: none] [env: RTPVISOR_HTTP_TOKEN]
    #[arg(long, value_name = "TOKEN")]
    pub http_token: Option<CliSecret>,
    /// File holding the HTTP API token (e.g. a Docker secret), trailing newline dropped; excludes --http-token [default: none] [env: RTPVISOR_HTTP_TOKEN_FILE]
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<String>,
    /// Actor failures (panics) tolerated within the restart window before the service escalates, 1-1000 [default: 5] [env: RTPVISOR_MAX_RESTARTS]
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<String>,
    /// Window in which actor failures are counted against --max-restarts, 100-600000 ms [default: 10000] [env: RTPVISOR_RESTART_WINDOW_MS]
    #[arg(long, value_name = "MS")]
    pub restart_window_ms: Option<String>,
    /// The media engine counts as stalled (the process escalates) after this long without a loop turn, 500-60000 ms [default: 2000] [env: RTPVISOR_MEDIA_STALL_MS]
    #[arg(long, value_name = "MS")]
    pub media_stall_ms: Option<String>,
    /// Enable the fault-injection HTTP routes (/faults/...): for tests only, never in production [default: false] [env: RTPVISOR_FAULT_INJECTION]
    #[arg(long, value_name = "BOOL")]
    pub fault_injection: Option<String>,
    /// How long shutdown waits for calls to end, ms [default: 5000] [env: RTPVISOR_SHUTDOWN_TIMEOUT_MS]
    #[arg(long, value_name = "MS")]
    pub shutdown_timeout_ms: Option<String>,
    /// Print the effective configuration as TOML (password redacted) and exit
    #[arg(long)]
    pub print_config: bool,
}

/// A secret given as a flag: `Debug` of the [`Cli`] shows [`REDACTED`] for it.
#[derive(Clone)]
pub struct CliSecret(SecretString);

impl std::str::FromStr for CliSecret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(CliSecret(SecretString::from(text.to_owned())))
    }
}

impl PartialEq for CliSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}

impl fmt::Debug for CliSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The text of a secret flag, for the parser.
fn exposed_flag(value: &Option<CliSecret>) -> Option<&str> {
    value.as_ref().map(|s| s.0.expose_secret())
}

impl Cli {
    fn value(&self, key: Key) -> Option<&str> {
        let value = match key {
            Key::AriUrl => &self.ari_url,
            Key::AriUser => &self.ari_user,
            Key::AriPassword => return exposed_flag(&self.ari_password),
            Key::AriPasswordFile => &self.ari_password_file,
            Key::AriAllowDevPassword => &self.ari_allow_dev_password,
            Key::AriCaFile => &self.ari_ca_file,
            Key::AriApp => &self.ari_app,
            Key::AriRequestTimeoutMs => &self.ari_request_timeout_ms,
            Key::MediaHost => &self.media_host,
            Key::MediaBindIp => &self.media_bind_ip,
            Key::RtpPorts => &self.rtp_ports,
            Key::QuarantineMs => &self.quarantine_ms,
            Key::LateMs => &self.late_ms,
            Key::ProbeTimeoutMs => &self.probe_timeout_ms,
            Key::NoMediaTimeoutMs => &self.no_media_timeout_ms,
            Key::LinkDownSilenceMs => &self.link_down_silence_ms,
            Key::MaxCalls => &self.max_calls,
            Key::MediaStallMs => &self.media_stall_ms,
            Key::AriPingIntervalMs => &self.ari_ping_interval_ms,
            Key::AriPingTimeoutMs => &self.ari_ping_timeout_ms,
            Key::DefaultMode => &self.default_mode,
            Key::EchoAddr => &self.echo_addr,
            Key::EchoHost => &self.echo_host,
            Key::EchoAllow => &self.echo_allow,
            Key::EchoRatePps => &self.echo_rate_pps,
            Key::EchoBurst => &self.echo_burst,
            Key::EchoMaxBytes => &self.echo_max_bytes,
            Key::EchoWorkers => &self.echo_workers,
            Key::HttpAddr => &self.http_addr,
            Key::HttpToken => return exposed_flag(&self.http_token),
            Key::HttpTokenFile => &self.http_token_file,
            Key::MaxRestarts => &self.max_restarts,
            Key::RestartWindowMs => &self.restart_window_ms,
            Key::FaultInjection => &self.fault_injection,
            Key::ShutdownTimeoutMs => &self.shutdown_timeout_ms,
            Key::AriReconnectMinMs | Key::AriReconnectMaxMs => return None,
        };
        value.as_deref()
    }
}

/// One setting, independent of where it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    AriUrl,
    AriUser,
    AriPassword,
    AriPasswordFile,
    AriAllowDevPassword,
    AriCaFile,
    AriApp,
    AriReconnectMinMs,
    AriReconnectMaxMs,
    AriRequestTimeoutMs,
    MediaHost,
    MediaBindIp,
    RtpPorts,
    QuarantineMs,
    LateMs,
    ProbeTimeoutMs,
    NoMediaTimeoutMs,
    LinkDownSilenceMs,
    MaxCalls,
    MediaStallMs,
    AriPingIntervalMs,
    AriPingTimeoutMs,
    DefaultMode,
    EchoAddr,
    EchoHost,
    EchoAllow,
    EchoRatePps,
    EchoBurst,
    EchoMaxBytes,
    EchoWorkers,
    HttpAddr,
    HttpToken,
    HttpTokenFile,
    MaxRestarts,
    RestartWindowMs,
    FaultInjection,
    ShutdownTimeoutMs,
}

/// TOML value types a file key accepts; the value is then turned into text and judged by the
/// same parser as env and CLI values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    /// Integer or float (`late_ms = 20` must work).
    Num,
    /// `rtp_ports = "10000-10100"` or `rtp_ports = 10000`.
    StrOrInt,
    /// `enabled = true`; env and CLI spell it as text (see `parse_bool`).
    Bool,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Num => "a number",
            Kind::StrOrInt => "a string like \"10000-10100\" or an integer",
            Kind::Bool => "a boolean",
        }
    }
}

/// The names of one setting in each source.
struct Spec {
    key: Key,
    /// Dotted TOML key, also the canonical name in errors.
    path: &'static str,
    env: Option<&'static str>,
    flag: Option<&'static str>,
    kind: Kind,
}

impl Spec {
    fn section(&self) -> Option<&'static str> {
        self.path.split_once('.').map(|(section, _)| section)
    }
}

/// Every setting, in file order. The single table from which file keys, env names, flags and the
/// "known keys" lists are derived, so they cannot drift apart.
#[rustfmt::skip]
const SPECS: &[Spec] = &[
    Spec { key: Key::AriUrl, path: "ari.url", env: Some("RTPVISOR_ARI_URL"), flag: Some("--ari-url"), kind: Kind::Str },
    Spec { key: Key::AriUser, path: "ari.user", env: Some("RTPVISOR_ARI_USER"), flag: Some("--ari-user"), kind: Kind::Str },
    Spec { key: Key::AriPassword, path: "ari.password", env: Some("RTPVISOR_ARI_PASSWORD"), flag: Some("--ari-password"), kind: Kind::Str },
    Spec { key: Key::AriPasswordFile, path: "ari.password_file", env: Some("RTPVISOR_ARI_PASSWORD_FILE"), flag: Some("--ari-password-file"), kind: Kind::Str },
    Spec { key: Key::AriAllowDevPassword, path: "ari.allow_dev_password", env: Some("RTPVISOR_ARI_ALLOW_DEV_PASSWORD"), flag: Some("--ari-allow-dev-password"), kind: Kind::Bool },
    Spec { key: Key::AriCaFile, path: "ari.ca_file", env: Some("RTPVISOR_ARI_CA_FILE"), flag: Some("--ari-ca-file"), kind: Kind::Str },
    Spec { key: Key::AriApp, path: "ari.app", env: Some("RTPVISOR_ARI_APP"), flag: Some("--ari-app"), kind: Kind::Str },
    Spec { key: Key::AriReconnectMinMs, path: "ari.reconnect_min_ms", env: None, flag: None, kind: Kind::Int },
    Spec { key: Key::AriReconnectMaxMs, path: "ari.reconnect_max_ms", env: None, flag: None, kind: Kind::Int },
    Spec { key: Key::AriRequestTimeoutMs, path: "ari.request_timeout_ms", env: Some("RTPVISOR_ARI_REQUEST_TIMEOUT_MS"), flag: Some("--ari-request-timeout-ms"), kind: Kind::Int },
    Spec { key: Key::AriPingIntervalMs, path: "ari.ping_interval_ms", env: Some("RTPVISOR_ARI_PING_INTERVAL_MS"), flag: Some("--ari-ping-interval-ms"), kind: Kind::Int },
    Spec { key: Key::AriPingTimeoutMs, path: "ari.ping_timeout_ms", env: Some("RTPVISOR_ARI_PING_TIMEOUT_MS"), flag: Some("--ari-ping-timeout-ms"), kind: Kind::Int },
    Spec { key: Key::MediaHost, path: "media.host", env: Some("RTPVISOR_MEDIA_HOST"), flag: Some("--media-host"), kind: Kind::Str },
    Spec { key: Key::MediaBindIp, path: "media.bind_ip", env: Some("RTPVISOR_MEDIA_BIND_IP"), flag: Some("--media-bind-ip"), kind: Kind::Str },
    Spec { key: Key::RtpPorts, path: "media.rtp_ports", env: Some("RTPVISOR_RTP_PORTS"), flag: Some("--rtp-ports"), kind: Kind::StrOrInt },
    Spec { key: Key::QuarantineMs, path: "media.quarantine_ms", env: Some("RTPVISOR_QUARANTINE_MS"), flag: Some("--quarantine-ms"), kind: Kind::Int },
    Spec { key: Key::LateMs, path: "media.late_ms", env: Some("RTPVISOR_LATE_MS"), flag: Some("--late-ms"), kind: Kind::Num },
    Spec { key: Key::ProbeTimeoutMs, path: "media.probe_timeout_ms", env: Some("RTPVISOR_PROBE_TIMEOUT_MS"), flag: Some("--probe-timeout-ms"), kind: Kind::Int },
    Spec { key: Key::NoMediaTimeoutMs, path: "media.no_media_timeout_ms", env: Some("RTPVISOR_NO_MEDIA_TIMEOUT_MS"), flag: Some("--no-media-timeout-ms"), kind: Kind::Int },
    Spec { key: Key::LinkDownSilenceMs, path: "media.link_down_silence_ms", env: Some("RTPVISOR_LINK_DOWN_SILENCE_MS"), flag: Some("--link-down-silence-ms"), kind: Kind::Int },
    Spec { key: Key::MaxCalls, path: "media.max_calls", env: Some("RTPVISOR_MAX_CALLS"), flag: Some("--max-calls"), kind: Kind::Int },
    Spec { key: Key::DefaultMode, path: "media.default_mode", env: Some("RTPVISOR_DEFAULT_MODE"), flag: Some("--default-mode"), kind: Kind::Str },
    Spec { key: Key::EchoAddr, path: "echo.addr", env: Some("RTPVISOR_ECHO_ADDR"), flag: Some("--echo-addr"), kind: Kind::Str },
    Spec { key: Key::EchoHost, path: "echo.host", env: Some("RTPVISOR_ECHO_HOST"), flag: Some("--echo-host"), kind: Kind::Str },
    Spec { key: Key::EchoAllow, path: "echo.allow", env: Some("RTPVISOR_ECHO_ALLOW"), flag: Some("--echo-allow"), kind: Kind::Str },
    Spec { key: Key::EchoRatePps, path: "echo.rate_pps", env: Some("RTPVISOR_ECHO_RATE_PPS"), flag: Some("--echo-rate-pps"), kind: Kind::Int },
    Spec { key: Key::EchoBurst, path: "echo.burst", env: Some("RTPVISOR_ECHO_BURST"), flag: Some("--echo-burst"), kind: Kind::Int },
    Spec { key: Key::EchoMaxBytes, path: "echo.max_bytes", env: Some("RTPVISOR_ECHO_MAX_BYTES"), flag: Some("--echo-max-bytes"), kind: Kind::Int },
    Spec { key: Key::EchoWorkers, path: "echo.workers", env: Some("RTPVISOR_ECHO_WORKERS"), flag: Some("--echo-workers"), kind: Kind::Int },
    Spec { key: Key::HttpAddr, path: "http.addr", env: Some("RTPVISOR_HTTP_ADDR"), flag: Some("--http-addr"), kind: Kind::Str },
    Spec { key: Key::HttpToken, path: "http.token", env: Some("RTPVISOR_HTTP_TOKEN"), flag: Some("--http-token"), kind: Kind::Str },
    Spec { key: Key::HttpTokenFile, path: "http.token_file", env: Some("RTPVISOR_HTTP_TOKEN_FILE"), flag: Some("--http-token-file"), kind: Kind::Str },
    Spec { key: Key::MaxRestarts, path: "supervision.max_restarts", env: Some("RTPVISOR_MAX_RESTARTS"), flag: Some("--max-restarts"), kind: Kind::Int },
    Spec { key: Key::RestartWindowMs, path: "supervision.window_ms", env: Some("RTPVISOR_RESTART_WINDOW_MS"), flag: Some("--restart-window-ms"), kind: Kind::Int },
    Spec { key: Key::MediaStallMs, path: "supervision.media_stall_ms", env: Some("RTPVISOR_MEDIA_STALL_MS"), flag: Some("--media-stall-ms"), kind: Kind::Int },
    Spec { key: Key::FaultInjection, path: "faults.enabled", env: Some("RTPVISOR_FAULT_INJECTION"), flag: Some("--fault-injection"), kind: Kind::Bool },
    Spec { key: Key::ShutdownTimeoutMs, path: "shutdown_timeout_ms", env: Some("RTPVISOR_SHUTDOWN_TIMEOUT_MS"), flag: Some("--shutdown-timeout-ms"), kind: Kind::Int },
];

fn spec(key: Key) -> &'static Spec {
    SPECS
        .iter()
        .find(|spec| spec.key == key)
        .expect("every Key has a row in SPECS")
}

/// Where the current value of a setting came from.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    Default,
    File { path: String },
    Env { raw: String },
    Cli { raw: String },
}

impl Origin {
    /// Precedence: a higher rank overrides a lower one.
    fn rank(&self) -> u8 {
        match self {
            Origin::Default => 0,
            Origin::File { .. } => 1,
            Origin::Env { .. } => 2,
            Origin::Cli { .. } => 3,
        }
    }

    /// The setting as the operator wrote it, e.g. `RTPVISOR_RTP_PORTS="1-0"`. Values are shown
    /// Debug-quoted so control characters cannot break the one-line message; the password is
    /// never shown.
    fn describe(&self, spec: &Spec, config: &Config) -> String {
        let shown = |raw: &str| {
            if is_secret(spec.key) {
                "(hidden)".to_owned()
            } else if spec.key == Key::AriUrl {
                format!("{:?}", hide_url_credentials(raw))
            } else {
                format!("{raw:?}")
            }
        };
        match self {
            Origin::Default => {
                format!(
                    "{} = {} (built-in default)",
                    spec.path,
                    config.value_text(spec.key)
                )
            }
            Origin::File { path } => format!("{} in {path}", spec.path),
            Origin::Env { raw } => format!("{}={}", spec.env.unwrap_or(spec.path), shown(raw)),
            Origin::Cli { raw } => format!("{} {}", spec.flag.unwrap_or(spec.path), shown(raw)),
        }
    }

    fn empty_hint(&self) -> &'static str {
        match self {
            Origin::Default => "empty",
            Origin::File { .. } => "empty; remove the key to use the default",
            Origin::Env { .. } => "empty; unset the variable to use the default",
            Origin::Cli { .. } => "empty; omit the flag to use the default",
        }
    }
}

/// A configuration being merged, with the origin of every value that is not a default.
struct Draft {
    config: Config,
    origins: HashMap<Key, Origin>,
}

impl Draft {
    fn new() -> Self {
        Draft {
            config: Config::default(),
            origins: HashMap::new(),
        }
    }

    fn origin(&self, key: Key) -> &Origin {
        self.origins.get(&key).unwrap_or(&Origin::Default)
    }

    fn invalid(&self, key: Key, origin: &Origin, reason: String) -> ConfigError {
        let spec = spec(key);
        ConfigError::Invalid {
            setting: spec.path.to_owned(),
            given: origin.describe(spec, &self.config),
            reason,
        }
    }

    /// Parses and stores one value. Every source is checked as it is applied, even one a later
    /// source overrides: a broken variable left in a unit file should not wait to bite until the
    /// flag that hides it is removed.
    fn set(&mut self, key: Key, raw: &str, origin: Origin) -> Result<(), ConfigError> {
        // A secret's origin keeps no copy of it (messages show `(hidden)` anyway).
        let origin = match origin {
            Origin::Env { .. } if is_secret(key) => Origin::Env { raw: String::new() },
            Origin::Cli { .. } if is_secret(key) => Origin::Cli { raw: String::new() },
            other => other,
        };
        // An empty value is refused rather than read as "use the default": `RTPVISOR_RTP_PORTS=`
        // is far more often a broken template than a request for the default.
        let result = if raw.trim().is_empty() {
            Err(origin.empty_hint().to_owned())
        } else {
            self.config.set(key, raw)
        };
        if let Err(reason) = result {
            return Err(self.invalid(key, &origin, reason));
        }
        self.origins.insert(key, origin);
        Ok(())
    }

    fn apply_toml(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|error| {
            let (line, column) = line_column(text, error.span().map_or(0, |span| span.start));
            ConfigError::Syntax {
                origin: origin.to_owned(),
                line,
                column,
                message: one_line(error.message()),
            }
        })?;
        // Keys are checked against SPECS by hand rather than by serde's deny_unknown_fields:
        // serde's message names only the leaf (`unknown field "port"`), not its table, and the
        // toml crate does not expose the key path of an error.
        for (name, value) in &table {
            if let Some(spec) = SPECS.iter().find(|spec| spec.path == name) {
                self.set_from_toml(spec, value, origin)?;
                continue;
            }
            if !SPECS.iter().any(|spec| spec.section() == Some(name)) {
                return Err(unknown_key(name, origin, None));
            }
            let Some(section) = value.as_table() else {
                return Err(ConfigError::Invalid {
                    setting: name.clone(),
                    given: format!("{name} in {origin}"),
                    reason: format!("expected a table [{name}], got {}", value.type_str()),
                });
            };
            for (leaf, value) in section {
                let path = format!("{name}.{leaf}");
                let Some(spec) = SPECS.iter().find(|spec| spec.path == path) else {
                    return Err(unknown_key(&path, origin, Some(name)));
                };
                self.set_from_toml(spec, value, origin)?;
            }
        }
        Ok(())
    }

    fn set_from_toml(
        &mut self,
        spec: &Spec,
        value: &toml::Value,
        path: &str,
    ) -> Result<(), ConfigError> {
        use toml::Value;
        let origin = Origin::File {
            path: path.to_owned(),
        };
        let raw = match (spec.kind, value) {
            (Kind::Str | Kind::StrOrInt, Value::String(text)) => text.clone(),
            (Kind::Int | Kind::Num | Kind::StrOrInt, Value::Integer(number)) => number.to_string(),
            (Kind::Num, Value::Float(number)) => number.to_string(),
            (Kind::Bool, Value::Boolean(flag)) => flag.to_string(),
            (kind, other) => {
                let got = match other {
                    Value::Array(_) | Value::Table(_) => other.type_str().to_owned(),
                    _ if is_secret(spec.key) => other.type_str().to_owned(),
                    _ => format!("{} {other}", other.type_str()),
                };
                let reason = format!("expected {}, got {got}", kind.expected());
                return Err(self.invalid(spec.key, &origin, reason));
            }
        };
        self.set(spec.key, &raw, origin)
    }

    /// Checks between settings, after all sources are merged, and the files they name.
    fn finish(mut self) -> Result<Config, ConfigError> {
        self.read_files()?;
        let config = &self.config;
        let (ports, echo_port) = (config.media.rtp_ports, config.echo.addr.port());
        // Both are UDP: a call leased the echo port would fail to bind or steal echo traffic.
        if ports.contains(echo_port) {
            return Err(self.conflict(
                Key::RtpPorts,
                format!("range {ports} contains the echo UDP port {echo_port}"),
                Key::EchoAddr,
                format!("echo UDP port {echo_port} is inside the RTP port range {ports}"),
            ));
        }
        let ari = &config.ari;
        if ari.reconnect_min_ms > ari.reconnect_max_ms {
            return Err(self.conflict(
                Key::AriReconnectMinMs,
                format!(
                    "{} is above the maximum {}",
                    ari.reconnect_min_ms, ari.reconnect_max_ms
                ),
                Key::AriReconnectMaxMs,
                format!(
                    "{} is below the minimum {}",
                    ari.reconnect_max_ms, ari.reconnect_min_ms
                ),
            ));
        }
        if ari.password.expose() == DEV_PASSWORD && !ari.allow_dev_password {
            let host = url_host(&ari.url);
            if !is_loopback_host(host) {
                let why = format!(
                    "the development ARI password is refused toward the non-loopback host {host}; \
                     set Asterisk's real password (ari.password or ari.password_file), or \
                     ari.allow_dev_password (RTPVISOR_ARI_ALLOW_DEV_PASSWORD) on a private network"
                );
                let password_key = if ari.password.is_from_file() { Key::AriPasswordFile } else { Key::AriPassword };
                return Err(self.conflict(Key::AriUrl, why.clone(), password_key, why));
            }
        }
        if config.faults.enabled && config.http.token.is_none() {
            return Err(self.invalid(
                Key::FaultInjection,
                self.origin(Key::FaultInjection),
                "the /faults routes need an API token: set http.token (RTPVISOR_HTTP_TOKEN) or \
                 http.token_file (RTPVISOR_HTTP_TOKEN_FILE)"
                    .into(),
            ));
        }
        Ok(self.config)
    }

    /// Reads the files named by `ari.password_file`, `http.token_file` and `ari.ca_file`. A
    /// secret set both directly and by file is refused: which one was meant is not clear.
    fn read_files(&mut self) -> Result<(), ConfigError> {
        let both = |value: Key, file: Key| {
            format!("set either {} or {}, not both", spec(value).path, spec(file).path)
        };
        if let Some(path) = self.config.ari.password_file.clone() {
            if self.origin(Key::AriPassword) != &Origin::Default {
                let why = both(Key::AriPassword, Key::AriPasswordFile);
                return Err(self.conflict(Key::AriPasswordFile, why.clone(), Key::AriPassword, why));
            }
            let password = self.read_secret(Key::AriPasswordFile, &path, parse_password)?;
            self.config.ari.password = Secret::read_from_file(&password);
        }
        if let Some(path) = self.config.http.token_file.clone() {
            if self.origin(Key::HttpToken) != &Origin::Default {
                let why = both(Key::HttpToken, Key::HttpTokenFile);
                return Err(self.conflict(Key::HttpTokenFile, why.clone(), Key::HttpToken, why));
            }
            let token = self.read_secret(Key::HttpTokenFile, &path, parse_token)?;
            self.config.http.token = Some(Secret::read_from_file(&token));
        }
        if let Some(path) = &self.config.ari.ca_file {
            if let Err(e) = rtpvisor_actors::ari::tls::load_ca_file(std::path::Path::new(path)) {
                return Err(self.invalid(Key::AriCaFile, self.origin(Key::AriCaFile), e.to_string()));
            }
        }
        Ok(())
    }

    /// The content of a secret file without its trailing newline, judged by `parse`; errors
    /// never show the content.
    fn read_secret(
        &self,
        key: Key,
        path: &str,
        parse: fn(&str) -> Result<String, String>,
    ) -> Result<String, ConfigError> {
        let fail = |reason: String| self.invalid(key, self.origin(key), reason);
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let value = text.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(fail("the file is empty".into()));
        }
        parse(value).map_err(|reason| fail(format!("the file's content {reason}")))
    }

    /// Two settings that are fine alone but not together. The one from the higher-precedence
    /// source is blamed (ties blame `a`): it is the one the operator most recently changed.
    fn conflict(&self, a: Key, a_reason: String, b: Key, b_reason: String) -> ConfigError {
        let (blamed, reason, other) = if self.origin(b).rank() > self.origin(a).rank() {
            (b, b_reason, a)
        } else {
            (a, a_reason, b)
        };
        let other_given = self.origin(other).describe(spec(other), &self.config);
        self.invalid(
            blamed,
            self.origin(blamed),
            format!("{reason} (set by {other_given})"),
        )
    }
}

fn unknown_key(key: &str, origin: &str, section: Option<&str>) -> ConfigError {
    let mut known: Vec<&str> = Vec::new();
    for spec in SPECS {
        let name = match (section, spec.path.split_once('.')) {
            (Some(section), Some((owner, leaf))) if owner == section => leaf,
            (None, Some((owner, _))) => owner,
            (None, None) => spec.path,
            _ => continue,
        };
        if !known.contains(&name) {
            known.push(name);
        }
    }
    ConfigError::UnknownKey {
        key: key.to_owned(),
        origin: origin.to_owned(),
        known: known.join(", "),
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

fn one_line(text: &str) -> String {
    text.trim().replace('\n', "; ")
}

impl Config {
    /// Merges built-in defaults < TOML file < environment < CLI flags and validates the result.
    ///
    /// The file is `cli.config`, else `RTPVISOR_CONFIG`, else none. `env` looks up one variable;
    /// `main` passes `&|k| std::env::var(k).ok()`, tests a closure over a map. A variable that is
    /// set but empty is an error, not a request for the default.
    pub fn load(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut draft = Draft::new();
        let file = match (&cli.config, env(CONFIG_ENV)) {
            (Some(path), _) => Some((path.clone(), "--config")),
            (None, Some(path)) => Some((path, CONFIG_ENV)),
            (None, None) => None,
        };
        if let Some((path, given_by)) = file {
            if path.trim().is_empty() {
                let hint = if given_by == CONFIG_ENV {
                    Origin::Env { raw: String::new() }.empty_hint()
                } else {
                    Origin::Cli { raw: String::new() }.empty_hint()
                };
                return Err(ConfigError::Invalid {
                    setting: "config".into(),
                    given: format!("{given_by} \"\""),
                    reason: format!("{hint}; without a file only built-in defaults apply"),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::ReadFile {
                path: path.clone(),
                given_by,
                error,
            })?;
            draft.apply_toml(&text, &path)?;
        }
        for spec in SPECS {
            if let Some(raw) = spec.env.and_then(env) {
                draft.set(spec.key, &raw, Origin::Env { raw: raw.clone() })?;
            }
        }
        for spec in SPECS {
            if let Some(raw) = cli.value(spec.key) {
                draft.set(
                    spec.key,
                    raw,
                    Origin::Cli {
                        raw: raw.to_owned(),
                    },
                )?;
            }
        }
        draft.finish()
    }

    /// Built-in defaults overridden by the TOML `text`; `origin` (usually the file path) names
    /// the text in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut draft = Draft::new();
        draft.apply_toml(text, origin)?;
        draft.finish()
    }

    /// The configuration as TOML in the file format, password replaced by [`REDACTED`]
    /// (`--print-config`). It parses back with [`Config::from_toml_str`].
    pub fn to_toml_redacted(&self) -> String {
        // Cannot fail: every field is a string, integer, finite float or table of those, and
        // scalars precede tables only where toml allows.
        toml::to_string(self).expect("Config always serializes to TOML")
    }

    /// The address Asterisk uses to reach the shared echo port: `echo.host`, else `media.host`.
    pub fn echo_host(&self) -> &str {
        self.echo.host.as_deref().unwrap_or(&self.media.host)
    }

    /// Parses `raw` for `key` and stores it; the error is the reason only, the caller adds
    /// which setting and source.
    fn set(&mut self, key: Key, raw: &str) -> Result<(), String> {
        match key {
            Key::AriUrl => self.ari.url = parse_url(raw)?,
            Key::AriUser => self.ari.user = parse_user(raw)?,
            Key::AriPassword => self.ari.password = Secret::new(&parse_password(raw)?),
            Key::AriPasswordFile => self.ari.password_file = Some(parse_path(raw)?),
            Key::AriAllowDevPassword => self.ari.allow_dev_password = parse_bool(raw)?,
            Key::AriCaFile => self.ari.ca_file = Some(parse_path(raw)?),
            Key::AriApp => self.ari.app = parse_app(raw)?,
            Key::AriReconnectMinMs => {
                self.ari.reconnect_min_ms = parse_ms(raw, 1..=MAX_DURATION_MS)?
            }
            Key::AriReconnectMaxMs => {
                self.ari.reconnect_max_ms = parse_ms(raw, 1..=MAX_DURATION_MS)?
            }
            Key::AriRequestTimeoutMs => {
                self.ari.request_timeout_ms = parse_ms(raw, 1..=MAX_DURATION_MS)?
            }
            Key::MediaHost => self.media.host = parse_host(raw)?,
            Key::MediaBindIp => {
                self.media.bind_ip = raw
                    .trim()
                    .parse()
                    .map_err(|_| "not an IP address".to_owned())?
            }
            Key::RtpPorts => self.media.rtp_ports = PortRangeSetting::parse(raw)?,
            Key::QuarantineMs => self.media.quarantine_ms = parse_ms(raw, 0..=MAX_DURATION_MS)?,
            Key::LateMs => self.media.late_ms = parse_late_ms(raw)?,
            Key::ProbeTimeoutMs => {
                self.media.probe_timeout_ms = parse_ms(raw, PROBE_TIMEOUT_RANGE_MS)?
            }
            Key::NoMediaTimeoutMs => {
                self.media.no_media_timeout_ms = parse_ms(raw, 0..=MAX_NO_MEDIA_TIMEOUT_MS)?
            }
            Key::LinkDownSilenceMs => {
                self.media.link_down_silence_ms = parse_ms(raw, 0..=MAX_DURATION_MS)?
            }
            Key::MaxCalls => self.media.max_calls = parse_max_calls(raw)?,
            Key::MediaStallMs => self.supervision.media_stall_ms = parse_ms(raw, MEDIA_STALL_RANGE_MS)?,
            Key::AriPingIntervalMs => self.ari.ping_interval_ms = parse_ms(raw, 100..=MAX_DURATION_MS)?,
            Key::AriPingTimeoutMs => self.ari.ping_timeout_ms = parse_ms(raw, 100..=MAX_DURATION_MS)?,
            Key::DefaultMode => self.media.default_mode = parse_mode(raw)?,
            Key::EchoAddr => {
                let addr = parse_socket_addr(raw)?;
                // Port 0 would bind a random port, while Asterisk is told the configured one.
                if addr.port() == 0 {
                    return Err("port 0 is not allowed: Asterisk is sent to this port".into());
                }
                self.echo.addr = addr;
            }
            Key::EchoHost => self.echo.host = Some(parse_host(raw)?),
            Key::EchoAllow => self.echo.allow = raw.parse().map_err(|e| format!("{e}"))?,
            Key::EchoRatePps => self.echo.rate_pps = parse_count(raw, ECHO_RATE_RANGE, "datagrams per second")?,
            Key::EchoBurst => self.echo.burst = parse_count(raw, ECHO_BURST_RANGE, "datagrams")?,
            Key::EchoMaxBytes => self.echo.max_bytes = parse_count(raw, ECHO_MAX_BYTES_RANGE, "bytes")?,
            Key::EchoWorkers => self.echo.workers = parse_count(raw, ECHO_WORKERS_RANGE, "workers")?,
            Key::HttpAddr => self.http.addr = parse_socket_addr(raw)?,
            Key::HttpToken => self.http.token = Some(Secret::new(&parse_token(raw)?)),
            Key::HttpTokenFile => self.http.token_file = Some(parse_path(raw)?),
            Key::MaxRestarts => self.supervision.max_restarts = parse_max_restarts(raw)?,
            Key::RestartWindowMs => {
                self.supervision.window_ms = parse_ms(raw, RESTART_WINDOW_RANGE_MS)?
            }
            Key::FaultInjection => self.faults.enabled = parse_bool(raw)?,
            Key::ShutdownTimeoutMs => {
                self.shutdown_timeout_ms = parse_ms(raw, 0..=MAX_DURATION_MS)?
            }
        }
        Ok(())
    }

    /// The value of `key` in the text form the sources accept (secrets redacted; `none` for an
    /// unset file or token).
    fn value_text(&self, key: Key) -> String {
        match key {
            Key::AriUrl => self.ari.url.clone(),
            Key::AriUser => self.ari.user.clone(),
            Key::AriPassword => REDACTED.to_owned(),
            Key::AriPasswordFile => self.ari.password_file.clone().unwrap_or_else(|| "none".into()),
            Key::AriAllowDevPassword => self.ari.allow_dev_password.to_string(),
            Key::AriCaFile => self.ari.ca_file.clone().unwrap_or_else(|| "none".into()),
            Key::AriApp => self.ari.app.clone(),
            Key::AriReconnectMinMs => self.ari.reconnect_min_ms.to_string(),
            Key::AriReconnectMaxMs => self.ari.reconnect_max_ms.to_string(),
            Key::AriRequestTimeoutMs => self.ari.request_timeout_ms.to_string(),
            Key::MediaHost => self.media.host.clone(),
            Key::MediaBindIp => self.media.bind_ip.to_string(),
            Key::RtpPorts => self.media.rtp_ports.to_string(),
            Key::QuarantineMs => self.media.quarantine_ms.to_string(),
            Key::LateMs => self.media.late_ms.to_string(),
            Key::ProbeTimeoutMs => self.media.probe_timeout_ms.to_string(),
            Key::NoMediaTimeoutMs => self.media.no_media_timeout_ms.to_string(),
            Key::LinkDownSilenceMs => self.media.link_down_silence_ms.to_string(),
            Key::MaxCalls => self.media.max_calls.to_string(),
            Key::MediaStallMs => self.supervision.media_stall_ms.to_string(),
            Key::AriPingIntervalMs => self.ari.ping_interval_ms.to_string(),
            Key::AriPingTimeoutMs => self.ari.ping_timeout_ms.to_string(),
            Key::DefaultMode => self.media.default_mode.clone(),
            Key::EchoAddr => self.echo.addr.to_string(),
            Key::EchoHost => self
                .echo
                .host
                .clone()
                .unwrap_or_else(|| "media.host".into()),
            Key::EchoAllow => self.echo.allow.to_string(),
            Key::EchoRatePps => self.echo.rate_pps.to_string(),
            Key::EchoBurst => self.echo.burst.to_string(),
            Key::EchoMaxBytes => self.echo.max_bytes.to_string(),
            Key::EchoWorkers => self.echo.workers.to_string(),
            Key::HttpAddr => self.http.addr.to_string(),
            Key::HttpToken => match self.http.token {
                Some(_) => REDACTED.to_owned(),
                None => "none".into(),
            },
            Key::HttpTokenFile => self.http.token_file.clone().unwrap_or_else(|| "none".into()),
            Key::MaxRestarts => self.supervision.max_restarts.to_string(),
            Key::RestartWindowMs => self.supervision.window_ms.to_string(),
            Key::FaultInjection => self.faults.enabled.to_string(),
            Key::ShutdownTimeoutMs => self.shutdown_timeout_ms.to_string(),
        }
    }
}

fn parse_url(raw: &str) -> Result<String, String> {
    if raw.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace".into());
    }
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host after the scheme".into());
    }
    // A URL is logged and shown in /ready; a password in it would be too.
    if authority(rest).contains('@') {
        return Err(
            "must not contain credentials (user:password@): set ari.user and ari.password \
             (or ari.password_file) instead"
                .into(),
        );
    }
    // The ARI client appends paths like "/channels"; a trailing slash would double it.
    Ok(raw.trim_end_matches('/').to_owned())
}

/// The authority of a URL without its scheme: everything before the first '/', '?' or '#'.
fn authority(rest: &str) -> &str {
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// `raw` with any `userinfo@` of its authority replaced by `***@`, for error messages.
fn hide_url_credentials(raw: &str) -> String {
    let (scheme, rest) = raw.split_once("://").unwrap_or(("", raw));
    let auth = authority(rest);
    match auth.rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}***{}", &rest[at..])
        }
        None => raw.to_owned(),
    }
}

/// The host of a validated ARI URL (without port or IPv6 brackets).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let auth = authority(rest);
    if let Some(v6) = auth.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    auth.rsplit_once(':').map_or(auth, |(host, _)| host)
}

/// Loopback: `localhost` or an address in 127.0.0.0/8 or ::1.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Settings whose values never appear in messages.
fn is_secret(key: Key) -> bool {
    matches!(key, Key::AriPassword | Key::HttpToken)
}

fn parse_password(raw: &str) -> Result<String, String> {
    // It goes into a header (base64 keeps any byte safe), but a line break is a paste accident.
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(raw.to_owned())
}

/// RFC 6750 sends the token in a header: visible ASCII, no spaces; long enough not to guess.
fn parse_token(raw: &str) -> Result<String, String> {
    if !raw.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be visible ASCII without spaces (it goes into an HTTP header)".into());
    }
    if raw.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
        ));
    }
    if raw.len() > 4096 {
        return Err("must be at most 4096 characters".into());
    }
    Ok(raw.to_owned())
}

fn parse_path(raw: &str) -> Result<String, String> {
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(raw.to_owned())
}

fn parse_user(raw: &str) -> Result<String, String> {
    // HTTP basic auth joins user and password with ':' (RFC 7617), so the user cannot hold one.
    if raw.contains(':') {
        return Err("must not contain ':' (HTTP basic auth separator)".into());
    }
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(raw.to_owned())
}

fn parse_app(raw: &str) -> Result<String, String> {
    // The app name goes unescaped into REST paths (/applications/{app}) and the events URL
    // query (?app=...), so path and query delimiters would change what we ask Asterisk for.
    if let Some(bad) = raw
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "/?#&%=+".contains(*c))
    {
        return Err(format!(
            "must not contain {bad:?}; the name goes unescaped into ARI URLs"
        ));
    }
    Ok(raw.to_owned())
}

fn parse_host(raw: &str) -> Result<String, String> {
    let why = "Asterisk must be able to send RTP to it";
    if let Ok(ip) = raw.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err(format!(
                "{ip} is the unspecified address, not one this host can be reached at; {why}"
            ));
        }
        return Ok(raw.to_owned());
    }
    let is_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.len() > 253 || !name.split('.').all(is_label) {
        return Err(format!(
            "not an IP address or host name (no port, no brackets); {why}"
        ));
    }
    Ok(raw.to_owned())
}

fn parse_ms(raw: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, String> {
    let raw = raw.trim();
    if raw.starts_with('-') {
        return Err("must not be negative".into());
    }
    let value: u64 = raw
        .parse()
        .map_err(|_| "not a whole number of milliseconds".to_owned())?;
    if !range.contains(&value) {
        return Err(format!(
            "{value} ms is outside {}..={} ms",
            range.start(),
            range.end()
        ));
    }
    Ok(value)
}

fn parse_max_restarts(raw: &str) -> Result<u32, String> {
    let raw = raw.trim();
    if raw.starts_with('-') {
        return Err("must not be negative".into());
    }
    // Parsed wide so an out-of-range number gets the range message, not "not a number".
    let value: u64 = raw
        .parse()
        .map_err(|_| "not a whole number of restarts".to_owned())?;
    if !MAX_RESTARTS_RANGE.contains(&value) {
        return Err(format!(
            "{value} is outside {}..={}",
            MAX_RESTARTS_RANGE.start(),
            MAX_RESTARTS_RANGE.end()
        ));
    }
    Ok(u32::try_from(value).expect("range fits in u32"))
}

/// A whole number of `unit` within `range` (which fits u32).
fn parse_count(raw: &str, range: std::ops::RangeInclusive<u64>, unit: &str) -> Result<u32, String> {
    let raw = raw.trim();
    if raw.starts_with('-') {
        return Err("must not be negative".into());
    }
    // Parsed wide so an out-of-range number gets the range message, not "not a number".
    let value: u64 = raw.parse().map_err(|_| format!("not a whole number of {unit}"))?;
    if !range.contains(&value) {
        return Err(format!("{value} is outside {}..={}", range.start(), range.end()));
    }
    Ok(u32::try_from(value).expect("ranges fit in u32"))
}

fn parse_max_calls(raw: &str) -> Result<u32, String> {
    let n: u32 = raw.trim().parse().map_err(|_| "not a whole number of calls".to_owned())?;
    if n > 65_536 {
        return Err(format!("{n} is above 65536"));
    }
    Ok(n)
}

fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("not a boolean; expected true, false, 1, 0, yes or no".into()),
    }
}

fn parse_late_ms(raw: &str) -> Result<f64, String> {
    let value: f64 = raw
        .trim()
        .parse()
        .map_err(|_| "not a number of milliseconds".to_owned())?;
    if !value.is_finite() || value <= 0.0 || value > MAX_LATE_MS {
        return Err(format!(
            "must be a finite number above 0 and at most {MAX_LATE_MS} ms"
        ));
    }
    Ok(value)
}

fn parse_mode(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if !MEDIA_MODES.contains(&raw) {
        return Err(format!("must be one of {}", MEDIA_MODES.join(", ")));
    }
    Ok(raw.to_owned())
}

fn parse_socket_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.trim()
        .parse()
        .map_err(|_| "not an IP:port socket address (IPv6 as [::1]:9090)".to_owned())
}

// Reads the help text clap derives from the doc comments; used only by tests.
#[cfg(test)]
fn flag_help(flag: &str) -> Option<String> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .find(|arg| arg.get_long() == flag.strip_prefix("--"))
        .and_then(|arg| arg.get_help().map(ToString::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        move |key| map.get(key).map(|value| value.to_string())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// A config file in the temp dir, removed on drop.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "rtpvisor-config-{}-{name}.toml",
                std::process::id()
            ));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }

        fn path(&self) -> String {
            self.0.to_str().unwrap().to_owned()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn cli_with(key: Key, value: &str) -> Cli {
        let flag = spec(key).flag.unwrap();
        Cli::try_parse_from(["rtpvisor", &format!("{flag}={value}")]).unwrap()
    }

    /// TOML line for `key = raw`, inside its section.
    fn toml_line(key: Key, raw: &str) -> String {
        let spec = spec(key);
        let literal = match spec.kind {
            Kind::Int | Kind::Num | Kind::Bool => raw.to_owned(),
            Kind::Str | Kind::StrOrInt => format!("{raw:?}"),
        };
        match spec.path.split_once('.') {
            Some((section, leaf)) => format!("[{section}]\n{leaf} = {literal}\n"),
            None => format!("{} = {literal}\n", spec.path),
        }
    }

    /// A file under a per-process temp directory with `text`, made once; its path lives for the
    /// whole test run (samples of the `*_file` settings).
    fn sample_file(name: &str, text: &str) -> &'static str {
        use std::sync::Mutex;
        static MADE: Mutex<Vec<(String, &'static str)>> = Mutex::new(Vec::new());
        let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, path)) = made.iter().find(|(n, _)| n == name) {
            return path;
        }
        let dir = std::env::temp_dir().join(format!("rtpvisor-config-samples-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let path: &'static str = Box::leak(path.to_str().unwrap().to_owned().into_boxed_str());
        made.push((name.to_owned(), path));
        path
    }

    /// A CA certificate in PEM (a self-signed test CA).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUMuvBIkRvSsDi07Vt+PcJxZ599pswCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQcnRwdmlzb3IgdGVzdCBDQTAeFw0yNjEyMDIxMzI4NDdaFw0z
NjExMjkxMzI4NDdaMBsxGTAXBgNVBAMMEHJ0cHZpc29yIHRlc3QgQ0EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAS3mlgfXIqWKGcyLAUEqvSc6r4Mxn7el7oPYiC/
BDnn90oZevYq2kYDock1gDIwjG6s7C/JfYzKB2ln3p/apjkso1MwUTAdBgNVHQ4E
FgQUyd82pGwNfgy2L1nsEIDpfSfXob4wHwYDVR0jBBgwFoAUyd82pGwNfgy2L1ns
EIDpfSfXob4wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiB7rxp1
cZs2HdjlgtSnr/wyR7yvbuuaQ6bwr+2NHTJyKQIhAPbzHwzpJm2u64EmqyGOAXd/
0Poq4ECIJJ9Rhp2xyiMY
-----END CERTIFICATE-----
";

    /// A valid API token for tests that need one (fault injection).
    const TOKEN: &str = "test-token-0123456789abcdef";

    /// Settings a sample of `key` needs beside it to be valid: fault injection needs a token.
    fn companion_env(key: Key) -> Vec<(&'static str, &'static str)> {
        match key {
            Key::FaultInjection => vec![("RTPVISOR_HTTP_TOKEN", TOKEN)],
            _ => Vec::new(),
        }
    }

    /// Three distinct valid values per setting (file, env, cli), in canonical text form.
    fn samples(key: Key) -> [&'static str; 3] {
        match key {
            Key::AriUrl => [
                "http://127.0.0.1:8088/ari",
                "https://localhost/ari",
                "http://[::1]:8088/ari",
            ],
            Key::AriUser => ["fileuser", "envuser", "cliuser"],
            Key::AriPassword => ["filepw", "envpw", "clipw"],
            Key::AriPasswordFile => [
                sample_file("pw1", "file-pw-1\n"),
                sample_file("pw2", "file-pw-2"),
                sample_file("pw3", "file-pw-3\r\n"),
            ],
            Key::AriAllowDevPassword => ["true", "false", "true"],
            Key::AriCaFile => [
                sample_file("ca1.pem", CA_PEM),
                sample_file("ca2.pem", CA_PEM),
                sample_file("ca3.pem", CA_PEM),
            ],
            Key::AriApp => ["file-app", "env_app", "cli.app"],
            Key::AriReconnectMinMs => ["100", "150", "250"],
            Key::AriReconnectMaxMs => ["6000", "7000", "8000"],
            Key::AriRequestTimeoutMs => ["1000", "2000", "3000"],
            Key::MediaHost => ["10.0.0.1", "pbx-peer.example.org", "::1"],
            Key::MediaBindIp => ["10.0.0.2", "::", "192.168.1.1"],
            Key::RtpPorts => ["20000-20010", "30000", "40000-40100"],
            Key::QuarantineMs => ["0", "100", "600000"],
            Key::LateMs => ["5", "0.5", "60000"],
            Key::ProbeTimeoutMs => ["1", "500", "10000"],
            Key::NoMediaTimeoutMs => ["1000", "0", "3600000"],
            Key::LinkDownSilenceMs => ["0", "1000", "600000"],
            Key::MaxCalls => ["0", "4", "65536"],
            Key::MediaStallMs => ["500", "1500", "60000"],
            Key::AriPingIntervalMs => ["100", "2500", "600000"],
            Key::AriPingTimeoutMs => ["200", "3000", "60000"],
            Key::DefaultMode => ["probe", "shared-echo", "echo"],
            Key::EchoAddr => ["127.0.0.1:4001", "[::1]:4002", "0.0.0.0:4003"],
            Key::EchoHost => ["echo.example", "10.1.1.1", "fe80::1"],
            Key::EchoAllow => ["127.0.0.0/8,::1/128,172.31.250.0/24", "10.0.0.0/8", "0.0.0.0/0,::/0"],
            Key::EchoRatePps => ["0", "50", "10000000"],
            Key::EchoBurst => ["1", "100", "10000000"],
            Key::EchoMaxBytes => ["1", "172", "2048"],
            Key::EchoWorkers => ["1", "3", "1024"],
            Key::HttpAddr => ["127.0.0.1:0", "[::]:9091", "0.0.0.0:80"],
            Key::HttpToken => ["file-token-0123456789", "env-token-0123456789", "cli-token-0123456789"],
            Key::HttpTokenFile => [
                sample_file("token1", "file-token-1-0123456789\n"),
                sample_file("token2", "file-token-2-0123456789"),
                sample_file("token3", "file-token-3-0123456789\n"),
            ],
            Key::MaxRestarts => ["1", "20", "1000"],
            Key::RestartWindowMs => ["100", "2500", "600000"],
            Key::FaultInjection => ["true", "false", "true"],
            Key::ShutdownTimeoutMs => ["0", "1", "600000"],
        }
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let config = Config::default();
        assert_eq!(config.ari.url, "http://127.0.0.1:8088/ari");
        assert_eq!(
            (
                config.ari.user.as_str(),
                config.ari.password.expose(),
                config.ari.app.as_str()
            ),
            ("rtpvisor", "rtpvisor", "rtpvisor")
        );
        assert_eq!(
            (
                config.ari.reconnect_min_ms,
                config.ari.reconnect_max_ms,
                config.ari.request_timeout_ms
            ),
            (200, 5000, 5000)
        );
        assert_eq!(config.media.host, "127.0.0.1");
        assert_eq!(config.media.bind_ip.to_string(), "0.0.0.0");
        assert_eq!(
            config.media.rtp_ports,
            PortRangeSetting {
                start: 10000,
                end: 10100
            }
        );
        assert_eq!(config.media.quarantine_ms, 2000);
        assert_eq!(config.media.late_ms, 20.0);
        assert_eq!(config.media.probe_timeout_ms, 2000);
        assert_eq!(config.media.no_media_timeout_ms, 30_000);
        assert_eq!((config.media.link_down_silence_ms, config.media.max_calls), (5000, 0));
        assert_eq!((config.ari.ping_interval_ms, config.ari.ping_timeout_ms), (5000, 5000));
        assert_eq!(config.media.default_mode, "echo");
        assert_eq!(config.echo.addr.to_string(), "0.0.0.0:4000");
        assert_eq!(config.echo.host, None);
        assert_eq!(config.echo.allow.to_string(), "127.0.0.0/8,::1/128");
        assert_eq!((config.echo.rate_pps, config.echo.burst, config.echo.max_bytes), (200, 400, 1500));
        assert_eq!(config.http.addr.to_string(), "0.0.0.0:9090");
        assert_eq!(
            config.supervision,
            SupervisionConfig {
                max_restarts: 5,
                window_ms: 10_000,
                media_stall_ms: 2000,
            }
        );
        assert!(!config.faults.enabled);
        assert_eq!(config.shutdown_timeout_ms, 5000);
        // The defaults must pass the same validation as any other source.
        assert_eq!(Config::load(&Cli::default(), &no_env).unwrap(), config);
        assert_eq!(Config::from_toml_str("", "empty.toml").unwrap(), config);
    }

    #[test]
    fn file_sets_every_key_and_accepts_integer_late_ms() {
        let text = r#"
            shutdown_timeout_ms = 7000
            [ari]
            url = "https://pbx:8089/ari/"
            user = "u"
            password = "p"
            app = "a"
            reconnect_min_ms = 10
            reconnect_max_ms = 20
            request_timeout_ms = 30
            [media]
            host = "pbx.example"
            bind_ip = "10.0.0.5"
            rtp_ports = 20000
            quarantine_ms = 1
            late_ms = 20
            probe_timeout_ms = 3
            no_media_timeout_ms = 4
            default_mode = "shared-echo"
            [echo]
            addr = "0.0.0.0:5000"
            host = "10.0.0.6"
            [http]
            addr = "127.0.0.1:9999"
            token = "0123456789abcdef"
            [supervision]
            max_restarts = 3
            window_ms = 1000
            [faults]
            enabled = true
        "#;
        let config = Config::from_toml_str(text, "t.toml").unwrap();
        assert_eq!(
            config.ari.url, "https://pbx:8089/ari",
            "trailing slash dropped"
        );
        assert_eq!(config.ari.reconnect_min_ms, 10);
        assert_eq!(
            config.media.rtp_ports,
            PortRangeSetting {
                start: 20000,
                end: 20000
            }
        );
        assert_eq!(config.media.late_ms, 20.0);
        assert_eq!(config.media.default_mode, "shared-echo");
        assert_eq!(config.echo_host(), "10.0.0.6");
        assert_eq!(config.http.addr.port(), 9999);
        assert_eq!(config.ari.request_timeout_ms, 30);
        assert_eq!(
            config.supervision,
            SupervisionConfig {
                max_restarts: 3,
                window_ms: 1000,
                media_stall_ms: 2000,
            }
        );
        assert!(config.faults.enabled);
        assert_eq!(config.shutdown_timeout_ms, 7000);
    }

    #[test]
    fn every_setting_is_read_from_the_file() {
        for spec in SPECS {
            let [file, _, _] = samples(spec.key);
            let mut text = toml_line(spec.key, file);
            if spec.key == Key::FaultInjection {
                text = format!("[http]\ntoken = \"{TOKEN}\"\n{text}");
            }
            let config = Config::from_toml_str(&text, "t.toml")
                .unwrap_or_else(|e| panic!("{}: {e}", spec.path));
            assert_eq!(
                config.value_text(spec.key),
                displayed(spec.key, file),
                "{}",
                spec.path
            );
        }
    }

    /// What `value_text` shows for a sample (secrets are always redacted there).
    fn displayed(key: Key, sample: &str) -> String {
        if is_secret(key) {
            REDACTED.to_owned()
        } else {
            sample.to_owned()
        }
    }

    fn password_of(config: &Config) -> &str {
        config.ari.password.expose()
    }

    #[test]
    fn each_env_var_overrides_the_file() {
        for spec in SPECS.iter().filter(|spec| spec.env.is_some()) {
            let [file_value, env_value, _] = samples(spec.key);
            let file = TempFile::new(spec.path, &toml_line(spec.key, file_value));
            let path = file.path();
            let mut env = vec![(CONFIG_ENV, path.as_str()), (spec.env.unwrap(), env_value)];
            env.extend(companion_env(spec.key));
            let config = Config::load(&Cli::default(), &env_of(&env))
                .unwrap_or_else(|e| panic!("{}: {e}", spec.path));
            assert_eq!(
                config.value_text(spec.key),
                displayed(spec.key, env_value),
                "{}",
                spec.path
            );
            if spec.key == Key::AriPassword {
                assert_eq!(password_of(&config), env_value);
            }
        }
    }

    #[test]
    fn each_flag_overrides_env() {
        for spec in SPECS.iter().filter(|spec| spec.flag.is_some()) {
            let [_, env_value, cli_value] = samples(spec.key);
            let mut env = vec![(spec.env.unwrap(), env_value)];
            env.extend(companion_env(spec.key));
            let config = Config::load(&cli_with(spec.key, cli_value), &env_of(&env))
                .unwrap_or_else(|e| panic!("{}: {e}", spec.path));
            assert_eq!(
                config.value_text(spec.key),
                displayed(spec.key, cli_value),
                "{}",
                spec.path
            );
            if spec.key == Key::AriPassword {
                assert_eq!(password_of(&config), cli_value);
            }
        }
    }

    #[test]
    fn config_flag_beats_config_env() {
        let chosen = TempFile::new("chosen", "[ari]\napp = \"from-flag-file\"\n");
        let other = TempFile::new("other", "[ari]\napp = \"from-env-file\"\n");
        let other_path = other.path();
        let cli = Cli::try_parse_from(["rtpvisor", "--config", &chosen.path()]).unwrap();
        let config = Config::load(&cli, &env_of(&[(CONFIG_ENV, &other_path)])).unwrap();
        assert_eq!(config.ari.app, "from-flag-file");
    }

    /// (setting, bad value, expected part of the reason)
    const INVALID: &[(Key, &str, &str)] = &[
        (
            Key::AriUrl,
            "ftp://pbx/ari",
            "must start with http:// or https://",
        ),
        (Key::AriUrl, "http://", "no host"),
        (Key::AriUrl, "http://pbx /ari", "whitespace"),
        (Key::AriUser, "a:b", "':'"),
        (Key::AriApp, "my/app", "'/'"),
        (Key::AriApp, "my app", "' '"),
        (Key::AriAllowDevPassword, "sure", "not a boolean"),
        (Key::AriPasswordFile, "/nonexistent/ari-password", "cannot read it"),
        (Key::AriCaFile, "/nonexistent/ca.pem", "cannot read the CA file"),
        (
            Key::MediaHost,
            "0.0.0.0",
            "Asterisk must be able to send RTP to it",
        ),
        (
            Key::MediaHost,
            "::",
            "Asterisk must be able to send RTP to it",
        ),
        (Key::MediaHost, "pbx:5060", "not an IP address or host name"),
        (Key::MediaBindIp, "localhost", "not an IP address"),
        (
            Key::RtpPorts,
            "10100-10000",
            "start 10100 is above end 10000",
        ),
        (Key::RtpPorts, "0-100", "port 0"),
        (
            Key::RtpPorts,
            "10000-70000",
            "\"70000\" is not a port number",
        ),
        (Key::RtpPorts, "abc", "not a port number"),
        (
            Key::RtpPorts,
            "3990-4010",
            "contains the echo UDP port 4000",
        ),
        (Key::QuarantineMs, "-5", "must not be negative"),
        (Key::QuarantineMs, "2s", "not a whole number"),
        (Key::QuarantineMs, "600001", "outside 0..=600000"),
        (Key::LateMs, "0", "above 0"),
        (Key::LateMs, "-1", "above 0"),
        (Key::LateMs, "NaN", "finite"),
        (Key::LateMs, "inf", "finite"),
        (Key::LateMs, "x", "not a number"),
        (Key::ProbeTimeoutMs, "0", "outside 1..=10000"),
        (Key::ProbeTimeoutMs, "10001", "outside 1..=10000"),
        (Key::NoMediaTimeoutMs, "3600001", "outside 0..=3600000"),
        (
            Key::DefaultMode,
            "loop",
            "must be one of echo, probe, shared-echo",
        ),
        (Key::EchoAddr, "4000", "not an IP:port socket address"),
        (Key::EchoAddr, "0.0.0.0:0", "port 0 is not allowed"),
        (
            Key::EchoAddr,
            "0.0.0.0:10050",
            "inside the RTP port range 10000-10100",
        ),
        (
            Key::EchoHost,
            "0.0.0.0",
            "Asterisk must be able to send RTP to it",
        ),
        (Key::EchoAllow, "10.0.0.1/8", "10.0.0.1/8 has host bits set; the network is 10.0.0.0/8"),
        (Key::EchoAllow, "10.0.0.0/8,lan", "\"lan\" is not an IP address or CIDR"),
        (Key::EchoAllow, "::/200", "prefix length /200 is too long"),
        (Key::EchoAllow, ",", "the list is empty"),
        (Key::EchoRatePps, "10000001", "10000001 is outside 0..=10000000"),
        (Key::EchoRatePps, "-1", "must not be negative"),
        (Key::EchoRatePps, "fast", "not a whole number of datagrams per second"),
        (Key::EchoBurst, "0", "0 is outside 1..=10000000"),
        (Key::EchoMaxBytes, "0", "0 is outside 1..=2048"),
        (Key::EchoMaxBytes, "9000", "9000 is outside 1..=2048"),
        (Key::EchoWorkers, "0", "0 is outside 1..=1024"),
        (Key::HttpAddr, "abc", "not an IP:port socket address"),
        (Key::HttpTokenFile, "/nonexistent/api-token", "cannot read it"),
        (Key::ShutdownTimeoutMs, "600001", "outside 0..=600000"),
        (Key::AriRequestTimeoutMs, "0", "outside 1..=600000"),
        (Key::AriRequestTimeoutMs, "5s", "not a whole number"),
        (Key::MaxRestarts, "0", "0 is outside 1..=1000"),
        (Key::MaxRestarts, "1001", "1001 is outside 1..=1000"),
        (Key::MaxRestarts, "4294967296", "outside 1..=1000"),
        (Key::MaxRestarts, "-1", "must not be negative"),
        (Key::MaxRestarts, "five", "not a whole number"),
        (Key::RestartWindowMs, "99", "99 ms is outside 100..=600000"),
        (Key::RestartWindowMs, "600001", "outside 100..=600000"),
        (Key::RestartWindowMs, "10s", "not a whole number"),
        (Key::FaultInjection, "maybe", "not a boolean"),
        (Key::FaultInjection, "2", "not a boolean"),
        (Key::FaultInjection, "on", "not a boolean"),
    ];

    fn assert_one_line(message: &str) {
        assert!(!message.contains('\n'), "not one line: {message}");
    }

    #[test]
    fn invalid_env_values_name_the_variable_and_value() {
        for &(key, bad, reason) in INVALID {
            let var = spec(key).env.unwrap();
            let error = Config::load(&Cli::default(), &env_of(&[(var, bad)])).unwrap_err();
            let message = error.to_string();
            assert_eq!(
                message,
                format!("invalid {var}={bad:?}: {}", reason_of(&error))
            );
            assert!(message.contains(reason), "{message} lacks {reason:?}");
            assert_one_line(&message);
            assert!(
                matches!(error, ConfigError::Invalid { ref setting, .. } if setting == spec(key).path)
            );
        }
    }

    fn reason_of(error: &ConfigError) -> &str {
        match error {
            ConfigError::Invalid { reason, .. } => reason,
            other => panic!("not Invalid: {other}"),
        }
    }

    #[test]
    fn invalid_flag_values_name_the_flag_and_value() {
        for &(key, bad, reason) in INVALID {
            let flag = spec(key).flag.unwrap();
            let error = Config::load(&cli_with(key, bad), &no_env).unwrap_err();
            let message = error.to_string();
            assert_eq!(
                message,
                format!("invalid {flag} {bad:?}: {}", reason_of(&error))
            );
            assert!(message.contains(reason), "{message} lacks {reason:?}");
            assert_one_line(&message);
        }
    }

    #[test]
    fn invalid_file_values_name_the_key_and_file() {
        for &(key, bad, reason) in INVALID {
            // Non-numbers cannot be written as TOML numbers, nor non-booleans as TOML booleans;
            // those cases are wrong TOML types and have their own test.
            let writable = match spec(key).kind {
                Kind::Int | Kind::Num => bad.parse::<f64>().is_ok(),
                Kind::Bool => false,
                Kind::Str | Kind::StrOrInt => true,
            };
            if !writable {
                continue;
            }
            let text = toml_line(key, bad).replace("= NaN", "= nan");
            let error = Config::from_toml_str(&text, "/etc/rtpvisor.toml").unwrap_err();
            let message = error.to_string();
            let expected = format!("invalid {} in /etc/rtpvisor.toml: ", spec(key).path);
            assert!(message.starts_with(&expected), "{message}");
            assert!(message.contains(reason), "{message} lacks {reason:?}");
            assert_one_line(&message);
        }
    }

    #[test]
    fn the_documented_example_messages() {
        let env = env_of(&[("RTPVISOR_RTP_PORTS", "10100-10000")]);
        assert_eq!(
            Config::load(&Cli::default(), &env).unwrap_err().to_string(),
            "invalid RTPVISOR_RTP_PORTS=\"10100-10000\": start 10100 is above end 10000"
        );
        let cli = Cli::try_parse_from(["rtpvisor", "--http-addr", "abc"]).unwrap();
        assert!(Config::load(&cli, &no_env)
            .unwrap_err()
            .to_string()
            .starts_with("invalid --http-addr \"abc\": not an IP:port socket address"));
        let error = Config::from_toml_str("[media]\nrtp_ports = \"2-1\"", "/etc/rtpvisor.toml")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid media.rtp_ports in /etc/rtpvisor.toml: start 2 is above end 1"
        );
    }

    #[test]
    fn wrong_toml_types_name_the_key() {
        let cases = [
            (
                "[media]\nquarantine_ms = \"2000\"",
                "media.quarantine_ms",
                "expected an integer, got string \"2000\"",
            ),
            (
                "[media]\nlate_ms = true",
                "media.late_ms",
                "expected a number, got boolean true",
            ),
            (
                "[media]\nprobe_timeout_ms = 1.5",
                "media.probe_timeout_ms",
                "expected an integer, got float 1.5",
            ),
            (
                "[media]\nrtp_ports = [1, 2]",
                "media.rtp_ports",
                "got array",
            ),
            (
                "[media]\nhost = 127",
                "media.host",
                "expected a string, got integer 127",
            ),
            (
                "[ari]\npassword = 12345",
                "ari.password",
                "expected a string, got integer",
            ),
            (
                "shutdown_timeout_ms = -1",
                "shutdown_timeout_ms",
                "must not be negative",
            ),
            (
                "media = 5",
                "media",
                "expected a table [media], got integer",
            ),
            (
                "[faults]\nenabled = \"yes\"",
                "faults.enabled",
                "expected a boolean, got string \"yes\"",
            ),
            (
                "[faults]\nenabled = 1",
                "faults.enabled",
                "expected a boolean, got integer 1",
            ),
            (
                "[supervision]\nmax_restarts = \"5\"",
                "supervision.max_restarts",
                "expected an integer, got string \"5\"",
            ),
            (
                "[supervision]\nmax_restarts = -1",
                "supervision.max_restarts",
                "must not be negative",
            ),
            (
                "[supervision]\nwindow_ms = 1e4",
                "supervision.window_ms",
                "expected an integer, got float",
            ),
        ];
        for (text, key, reason) in cases {
            let message = Config::from_toml_str(text, "f.toml")
                .unwrap_err()
                .to_string();
            assert!(
                message.starts_with(&format!("invalid {key} in f.toml: ")),
                "{message}"
            );
            assert!(message.contains(reason), "{message} lacks {reason:?}");
        }
        // Type errors must not echo the password.
        let message = Config::from_toml_str("[ari]\npassword = 12345", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(!message.contains("12345"), "{message}");
    }

    #[test]
    fn empty_values_are_errors_not_defaults() {
        let error =
            Config::load(&Cli::default(), &env_of(&[("RTPVISOR_RTP_PORTS", "")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid RTPVISOR_RTP_PORTS=\"\": empty; unset the variable to use the default"
        );
        for spec in SPECS {
            if let Some(var) = spec.env {
                let message = Config::load(&Cli::default(), &env_of(&[(var, " ")]))
                    .unwrap_err()
                    .to_string();
                assert!(message.starts_with(&format!("invalid {var}=")), "{message}");
                assert!(message.contains("empty"), "{message}");
            }
            if spec.flag.is_some() {
                let message = Config::load(&cli_with(spec.key, ""), &no_env)
                    .unwrap_err()
                    .to_string();
                assert!(message.contains("empty; omit the flag"), "{message}");
            }
            if matches!(spec.kind, Kind::Str | Kind::StrOrInt) {
                let message = Config::from_toml_str(&toml_line(spec.key, ""), "f.toml")
                    .unwrap_err()
                    .to_string();
                assert!(
                    message.contains(&format!("{} in f.toml: empty", spec.path)),
                    "{message}"
                );
            }
        }
        let message = Config::load(&Cli::default(), &env_of(&[(CONFIG_ENV, "")]))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("invalid RTPVISOR_CONFIG \"\": empty"),
            "{message}"
        );
    }

    #[test]
    fn password_is_hidden_in_errors() {
        let error =
            Config::load(&Cli::default(), &env_of(&[("RTPVISOR_ARI_PASSWORD", "  ")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid RTPVISOR_ARI_PASSWORD=(hidden): empty; unset the variable to use the default"
        );
    }

    #[test]
    fn secret_flags_are_redacted_in_debug() {
        let cli = Cli::try_parse_from(["rtpvisor", "--ari-password", "Zq9-flag-pw", "--http-token", "Zq9-flag-token-0123"])
            .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("Zq9") && shown.contains("***"), "{shown}");
        let config = Config::load(&cli, &no_env).unwrap();
        assert_eq!(config.ari.password.expose(), "Zq9-flag-pw");
        assert_eq!(config.http.token.unwrap().expose(), "Zq9-flag-token-0123");
    }

    #[test]
    fn fault_injection_needs_a_token() {
        let message = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_FAULT_INJECTION", "true")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "invalid RTPVISOR_FAULT_INJECTION=\"true\": the /faults routes need an API token: set \
             http.token (RTPVISOR_HTTP_TOKEN) or http.token_file (RTPVISOR_HTTP_TOKEN_FILE)"
        );
        let message = Config::from_toml_str("[faults]\nenabled = true", "f.toml").unwrap_err().to_string();
        assert!(message.starts_with("invalid faults.enabled in f.toml: the /faults routes need"), "{message}");
        let file = sample_file("fault-token", "a-token-in-a-file-0123\n");
        let pairs = [("RTPVISOR_FAULT_INJECTION", "yes"), ("RTPVISOR_HTTP_TOKEN_FILE", file)];
        let env = env_of(&pairs);
        let config = Config::load(&Cli::default(), &env).unwrap();
        assert!(config.faults.enabled);
        assert_eq!(config.http.token.as_ref().map(Secret::expose), Some("a-token-in-a-file-0123"));
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        for (bad, reason) in [
            ("short-token", "at least 16 characters"),
            ("a token with spaces in it", "visible ASCII without spaces"),
            ("tab\tseparated-token-0123", "visible ASCII"),
            ("nön-ascii-token-0123456789", "visible ASCII"),
        ] {
            let message = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_HTTP_TOKEN", bad)]))
                .unwrap_err()
                .to_string();
            assert!(message.starts_with("invalid RTPVISOR_HTTP_TOKEN=(hidden): "), "{message}");
            assert!(message.contains(reason) && !message.contains(bad), "{message}");
            let message = Config::load(&cli_with(Key::HttpToken, bad), &no_env).unwrap_err().to_string();
            assert!(message.starts_with("invalid --http-token (hidden): "), "{message}");
            let file = sample_file(&format!("bad-token-{}", bad.len()), &format!("{bad}\n"));
            let message = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_HTTP_TOKEN_FILE", file)]))
                .unwrap_err()
                .to_string();
            assert!(message.contains("the file's content must") && message.contains(reason), "{message}");
            assert!(!message.contains(bad), "{message}");
            let message = Config::from_toml_str(&toml_line(Key::HttpToken, bad), "f.toml").unwrap_err().to_string();
            assert!(message.starts_with("invalid http.token in f.toml: ") && !message.contains(bad), "{message}");
        }
        let message = Config::from_toml_str("[http]\ntoken = 1234567890123456789", "f.toml").unwrap_err().to_string();
        assert_eq!(message, "invalid http.token in f.toml: expected a string, got integer");
    }

    #[test]
    fn secret_files_drop_the_trailing_newline_and_exclude_the_direct_setting() {
        let pw = sample_file("pw-crlf", "p@ss word\r\n");
        let token = sample_file("token-lf", "0123456789abcdef0123\n\n");
        let pairs = [("RTPVISOR_ARI_PASSWORD_FILE", pw), ("RTPVISOR_HTTP_TOKEN_FILE", token)];
        let env = env_of(&pairs);
        let config = Config::load(&Cli::default(), &env).unwrap();
        assert_eq!(config.ari.password.expose(), "p@ss word");
        assert_eq!(config.http.token.as_ref().unwrap().expose(), "0123456789abcdef0123");
        // Printed: the file settings, not the secrets.
        let text = config.to_toml_redacted();
        assert!(!text.contains("\npassword =") && !text.contains("\ntoken ="), "{text}");
        assert!(text.contains(&format!("password_file = {pw:?}")), "{text}");
        assert!(text.contains(&format!("token_file = {token:?}")), "{text}");
        assert_eq!(Config::from_toml_str(&text, "printed").unwrap(), config, "reads the same files back");
        // Both ways at once: refused, the later source blamed, no secret shown.
        let pairs = [("RTPVISOR_ARI_PASSWORD_FILE", pw), ("RTPVISOR_ARI_PASSWORD", "direct-pw")];
        let env = env_of(&pairs);
        let message = Config::load(&Cli::default(), &env).unwrap_err().to_string();
        assert!(message.contains("set either ari.password or ari.password_file, not both"), "{message}");
        assert!(!message.contains("direct-pw") && !message.contains("p@ss"), "{message}");
        let cli = cli_with(Key::HttpTokenFile, token);
        let message = Config::load(&cli, &env_of(&[("RTPVISOR_HTTP_TOKEN", "0123456789abcdefXYZ")]))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with(&format!("invalid --http-token-file {token:?}: set either http.token")), "{message}");
        // An empty file is no secret.
        let empty = sample_file("empty", "\n");
        let message = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_ARI_PASSWORD_FILE", empty)]))
            .unwrap_err()
            .to_string();
        assert_eq!(message, format!("invalid RTPVISOR_ARI_PASSWORD_FILE={empty:?}: the file is empty"));
    }

    #[test]
    fn credentials_in_the_ari_url_are_refused_without_showing_them() {
        for url in ["http://rtpvisor:Zq9secret@pbx:8088/ari", "https://Zq9secret@127.0.0.1/ari"] {
            let message = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_ARI_URL", url)]))
                .unwrap_err()
                .to_string();
            assert!(message.contains("must not contain credentials (user:password@)"), "{message}");
            assert!(!message.contains("Zq9secret") && message.contains("***@"), "{message}");
            let message = Config::load(&cli_with(Key::AriUrl, url), &no_env).unwrap_err().to_string();
            assert!(!message.contains("Zq9secret"), "{message}");
        }
        // An '@' after the authority is no credential.
        assert!(Config::load(&Cli::default(), &env_of(&[("RTPVISOR_ARI_URL", "http://127.0.0.1/ari?x=a@b")])).is_ok());
        assert_eq!(hide_url_credentials("http://u:p@h/ari"), "http://***@h/ari");
        assert_eq!(hide_url_credentials("http://h/ari"), "http://h/ari");
    }

    #[test]
    fn the_development_password_stays_on_loopback_unless_allowed() {
        let remote = [("RTPVISOR_ARI_URL", "http://asterisk:8088/ari")];
        let message = Config::load(&Cli::default(), &env_of(&remote)).unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid RTPVISOR_ARI_URL=\"http://asterisk:8088/ari\": the development ARI password is \
             refused toward the non-loopback host asterisk; set Asterisk's real password (ari.password \
             or ari.password_file), or ari.allow_dev_password (RTPVISOR_ARI_ALLOW_DEV_PASSWORD) on a \
             private network (set by ari.password = *** (built-in default))"
        );
        let allowed = [remote[0], ("RTPVISOR_ARI_ALLOW_DEV_PASSWORD", "true")];
        assert!(Config::load(&Cli::default(), &env_of(&allowed)).is_ok());
        let real = [remote[0], ("RTPVISOR_ARI_PASSWORD", "a-real-one")];
        assert!(Config::load(&Cli::default(), &env_of(&real)).is_ok());
        // A dev password set explicitly (here from a flag, the latest source) is the one blamed.
        let cli = cli_with(Key::AriPassword, DEV_PASSWORD);
        let message = Config::load(&cli, &env_of(&remote)).unwrap_err().to_string();
        assert!(message.starts_with("invalid --ari-password (hidden): the development"), "{message}");
        for url in ["http://127.0.0.1:8088/ari", "https://localhost/ari", "http://[::1]:8088/ari", "http://127.9.9.9/ari"] {
            assert!(Config::load(&Cli::default(), &env_of(&[("RTPVISOR_ARI_URL", url)])).is_ok(), "{url}");
        }
        for (url, host) in [
            ("http://pbx:8088/ari", "pbx"),
            ("https://[fe80::1]:8089/ari", "fe80::1"),
            ("http://10.0.0.1/ari", "10.0.0.1"),
            ("http://h", "h"),
        ] {
            assert_eq!(url_host(url), host);
            assert!(!is_loopback_host(host));
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let not_pem = sample_file("not-a-ca.pem", "hello\n");
        let message = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_ARI_CA_FILE", not_pem)]))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with(&format!("invalid RTPVISOR_ARI_CA_FILE={not_pem:?}: ")), "{message}");
        assert!(message.contains("holds no certificate"), "{message}");
        let ca = sample_file("ca-ok.pem", CA_PEM);
        let config = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_ARI_CA_FILE", ca)])).unwrap();
        assert_eq!(config.ari.ca_file.as_deref(), Some(ca));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Text that is often a valid value of some setting, and often not.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[0-9]{1,8}",
                "-?[0-9]{0,6}(\\.[0-9]{0,4})?",
                "[0-9]{1,5}-[0-9]{1,5}",
                "(true|false|yes|no|TRUE|1|0|on)",
                "(echo|probe|shared-echo|loop)",
                "[a-z0-9.-]{1,24}",
                "(http|https|ftp)://[a-z0-9.@:]{0,16}(:[0-9]{1,5})?(/ari/?)?",
                "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(:[0-9]{1,5})?",
                "\\[[0-9a-f:]{2,12}\\](:[0-9]{1,5})?",
                "[!-~]{10,40}",
            ]
        }

        /// Settings that name files: loading them reads whatever path the text names.
        fn names_a_file(key: Key) -> bool {
            matches!(key, Key::AriPasswordFile | Key::HttpTokenFile | Key::AriCaFile)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any text for any setting: a value or a one-line reason, never a panic, whether
            /// parsed alone or loaded from the environment, a flag or a file.
            #[test]
            fn any_text_never_panics(index in 0..SPECS.len(), raw in text()) {
                let spec = &SPECS[index];
                let mut config = Config::default();
                if let Err(reason) = config.set(spec.key, &raw) {
                    prop_assert!(!reason.contains('\n'), "{reason}");
                }
                if !names_a_file(spec.key) {
                    if let Some(var) = spec.env {
                        if let Err(e) = Config::load(&Cli::default(), &env_of(&[(var, raw.as_str())])) {
                            let message = e.to_string();
                            prop_assert!(!message.contains('\n'), "{message}");
                        }
                    }
                    let _ = Config::from_toml_str(&toml_line(spec.key, &raw), "f.toml");
                    if spec.flag.is_some() && !raw.starts_with('-') {
                        let flag = spec.flag.unwrap();
                        if let Ok(cli) = Cli::try_parse_from(["rtpvisor", &format!("{flag}={raw}")]) {
                            let _ = Config::load(&cli, &no_env);
                        }
                    }
                }
            }

            /// A value a setting accepts reads back the same from its text form.
            #[test]
            fn valid_values_round_trip_through_value_text(index in 0..SPECS.len(), raw in text()) {
                let key = SPECS[index].key;
                let mut config = Config::default();
                if !is_secret(key) && config.set(key, &raw).is_ok() {
                    let text = config.value_text(key);
                    let mut again = Config::default();
                    prop_assert_eq!(again.set(key, &text), Ok(()), "{:?} {:?} -> {:?}", key, raw, text);
                    prop_assert_eq!(&again, &config, "{:?} {:?} -> {:?}", key, raw, text);
                    prop_assert_eq!(again.value_text(key), text);
                }
            }

            /// A refused token is never in the message.
            #[test]
            fn refused_tokens_are_not_shown(a in "[a-zA-Z0-9]{12,20}", b in "[a-zA-Z0-9]{12,20}") {
                let token = format!("{a} {b}");
                let message = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_HTTP_TOKEN", token.as_str())]))
                    .unwrap_err()
                    .to_string();
                prop_assert!(!message.contains(&a) && !message.contains(&b), "{}", message);
            }
        }
    }

    #[test]
    fn unknown_keys_are_named_with_their_table() {
        let cases = [
            ("[media]\nrtp_port = \"1-2\"", "unknown key media.rtp_port in f.toml; known keys here: host, bind_ip, rtp_ports"),
            ("colour = 1", "unknown key colour in f.toml; known keys here: ari, media, echo, http, supervision, faults, shutdown_timeout_ms"),
            ("[supervision]\nmax_restart = 3", "unknown key supervision.max_restart in f.toml; known keys here: max_restarts, window_ms"),
            ("[faults]\nenable = true", "unknown key faults.enable in f.toml; known keys here: enabled"),
            ("[metrics]\nport = 1", "unknown key metrics in f.toml"),
            ("[echo.extra]\nx = 1", "unknown key echo.extra in f.toml; known keys here: addr, host"),
        ];
        for (text, expected) in cases {
            let message = Config::from_toml_str(text, "f.toml")
                .unwrap_err()
                .to_string();
            assert!(message.starts_with(expected), "{message}");
            assert_one_line(&message);
        }
    }

    #[test]
    fn toml_syntax_errors_are_one_line_with_position() {
        let error = Config::from_toml_str("[ari]\nurl = \"unterminated\n", "f.toml").unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("invalid TOML in f.toml at line 2, column "),
            "{message}"
        );
        assert_one_line(&message);
    }

    #[test]
    fn missing_file_names_the_path_and_who_asked() {
        let missing = "/nonexistent/rtpvisor-test.toml";
        let cli = Cli::try_parse_from(["rtpvisor", "--config", missing]).unwrap();
        let message = Config::load(&cli, &no_env).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "cannot read config file {missing:?} (from --config): "
            )),
            "{message}"
        );
        assert_one_line(&message);
        let message = Config::load(&Cli::default(), &env_of(&[(CONFIG_ENV, missing)]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("(from RTPVISOR_CONFIG)"), "{message}");
    }

    #[test]
    fn conflicts_blame_the_most_recently_set_side() {
        // Env ports vs default echo port: the env value is blamed, the default is explained.
        let env = env_of(&[("RTPVISOR_RTP_PORTS", "3990-4010")]);
        assert_eq!(
            Config::load(&Cli::default(), &env).unwrap_err().to_string(),
            "invalid RTPVISOR_RTP_PORTS=\"3990-4010\": range 3990-4010 contains the echo UDP port 4000 \
             (set by echo.addr = 0.0.0.0:4000 (built-in default))"
        );
        // File ports vs CLI echo port: the flag is blamed.
        let file = TempFile::new("conflict", "[media]\nrtp_ports = \"5000-5100\"\n");
        let cli = Cli::try_parse_from([
            "rtpvisor",
            "--config",
            &file.path(),
            "--echo-addr",
            "0.0.0.0:5050",
        ])
        .unwrap();
        let message = Config::load(&cli, &no_env).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "invalid --echo-addr \"0.0.0.0:5050\": echo UDP port 5050 is inside the RTP port range 5000-5100 \
                 (set by media.rtp_ports in {})",
                file.path()
            )
        );
        let message = Config::from_toml_str("[ari]\nreconnect_min_ms = 6000", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with(
                "invalid ari.reconnect_min_ms in f.toml: 6000 is above the maximum 5000"
            ),
            "{message}"
        );
    }

    #[test]
    fn password_is_redacted_in_serialization_and_debug() {
        let mut config = Config::default();
        config.ari.password = Secret::new("s3cret-pw");
        config.http.token = Some(Secret::new("s3cret-token-0123456789"));
        let text = config.to_toml_redacted();
        assert!(text.contains("password = \"***\""), "{text}");
        assert!(text.contains("token = \"***\""), "{text}");
        for shown in [text, format!("{config:?}"), format!("{config:#?}"), format!("{:#?}", config.ari)] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn print_config_parses_back_to_the_same_config() {
        let mut config = Config::default();
        // A secret set both directly and by file is refused: the direct ones here, the files
        // in the next test.
        let sample_cli: Vec<String> = SPECS
            .iter()
            .filter(|spec| !matches!(spec.key, Key::AriPasswordFile | Key::HttpTokenFile))
            .filter_map(|spec| Some(format!("{}={}", spec.flag?, samples(spec.key)[2])))
            .collect();
        let cli =
            Cli::try_parse_from(std::iter::once("rtpvisor".to_owned()).chain(sample_cli)).unwrap();
        for changed in [config.clone(), Config::load(&cli, &no_env).unwrap()] {
            config = changed;
            let text = config.to_toml_redacted();
            // A redacted token is too short to load: put a real one where it stands.
            let reloadable = text.replace("token = \"***\"", &format!("token = \"{TOKEN}\""));
            let parsed = Config::from_toml_str(&reloadable, "printed")
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(parsed.ari.password.expose(), REDACTED);
            let mut expected = config.clone();
            expected.ari.password = Secret::new(REDACTED);
            if expected.http.token.is_some() {
                assert!(text.contains("token = \"***\""), "{text}");
                expected.http.token = Some(Secret::new(TOKEN));
            }
            assert_eq!(parsed, expected, "{text}");
        }
        assert_eq!(
            config.echo.host.as_deref(),
            Some("fe80::1"),
            "round trip covered echo.host"
        );
    }

    #[test]
    fn echo_host_defaults_to_media_host() {
        let mut config = Config::default();
        config.media.host = "pbx-side.example".into();
        assert_eq!(config.echo_host(), "pbx-side.example");
        config.echo.host = Some("10.9.9.9".into());
        assert_eq!(config.echo_host(), "10.9.9.9");
    }

    #[test]
    fn cli_help_states_default_and_env_for_every_flag() {
        Cli::command().debug_assert();
        let defaults = Config::default();
        for spec in SPECS.iter().filter(|spec| spec.flag.is_some()) {
            let help =
                flag_help(spec.flag.unwrap()).unwrap_or_else(|| panic!("{} missing", spec.path));
            let default = match spec.key {
                Key::AriPassword => DEV_PASSWORD.to_owned(),
                // Depends on the machine: the help says where it comes from.
                Key::EchoWorkers => "number of cores".to_owned(),
                key => defaults.value_text(key),
            };
            assert!(help.contains(&format!("[default: {default}]")), "{help}");
            assert!(
                help.contains(&format!("[env: {}]", spec.env.unwrap())),
                "{help}"
            );
        }
        assert!(flag_help("--config")
            .unwrap()
            .contains("[env: RTPVISOR_CONFIG]"));
        // Every value flag is in SPECS, so none can bypass validation.
        for arg in Cli::command().get_arguments() {
            let long = format!("--{}", arg.get_long().unwrap());
            let known = SPECS.iter().any(|spec| spec.flag == Some(long.as_str()));
            assert!(
                known
                    || ["--config", "--print-config", "--help", "--version"]
                        .contains(&long.as_str()),
                "{long}"
            );
        }
    }

    #[test]
    fn cli_parses_print_config_and_keeps_values_as_text() {
        let cli = Cli::try_parse_from(["rtpvisor", "--print-config", "--late-ms", "2.5"]).unwrap();
        assert!(cli.print_config);
        assert_eq!(cli.late_ms.as_deref(), Some("2.5"));
        assert_eq!(Config::load(&cli, &no_env).unwrap().media.late_ms, 2.5);
    }

    #[test]
    fn fault_injection_accepts_the_usual_boolean_spellings() {
        for (raw, expected) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("Yes", true),
            (" yes ", true),
            ("false", false),
            ("False", false),
            ("0", false),
            ("NO", false),
        ] {
            let pairs = [("RTPVISOR_FAULT_INJECTION", raw), ("RTPVISOR_HTTP_TOKEN", TOKEN)];
            let config = Config::load(&Cli::default(), &env_of(&pairs)).unwrap();
            assert_eq!(config.faults.enabled, expected, "env {raw:?}");
            let cli = Cli::try_parse_from(["rtpvisor", "--fault-injection", raw]).unwrap();
            let config = Config::load(&cli, &env_of(&pairs[1..])).unwrap();
            assert_eq!(config.faults.enabled, expected, "flag {raw:?}");
        }
        // The flag takes a value; bare `--fault-injection` is a usage error, not "true".
        assert!(Cli::try_parse_from(["rtpvisor", "--fault-injection"]).is_err());
        // A flag "false" overrides an env "true".
        let cli = Cli::try_parse_from(["rtpvisor", "--fault-injection", "false"]).unwrap();
        let env = env_of(&[("RTPVISOR_FAULT_INJECTION", "true")]);
        assert!(!Config::load(&cli, &env).unwrap().faults.enabled);
        assert_eq!(
            Config::load(&Cli::default(), &env_of(&[("RTPVISOR_FAULT_INJECTION", "on")]))
                .unwrap_err()
                .to_string(),
            "invalid RTPVISOR_FAULT_INJECTION=\"on\": not a boolean; expected true, false, 1, 0, yes or no"
        );
        assert_eq!(
            flag_help("--fault-injection").unwrap(),
            "Enable the fault-injection HTTP routes (/faults/...): for tests only, never in \
             production [default: false] [env: RTPVISOR_FAULT_INJECTION]"
        );
    }

    #[test]
    fn supervision_and_request_timeout_from_env_and_flags() {
        let env = env_of(&[
            ("RTPVISOR_ARI_REQUEST_TIMEOUT_MS", "50"),
            ("RTPVISOR_MAX_RESTARTS", "2"),
            ("RTPVISOR_RESTART_WINDOW_MS", "500"),
        ]);
        let config = Config::load(&Cli::default(), &env).unwrap();
        assert_eq!(config.ari.request_timeout_ms, 50);
        assert_eq!(
            config.supervision,
            SupervisionConfig {
                max_restarts: 2,
                window_ms: 500,
                media_stall_ms: 2000,
            }
        );
        let cli = Cli::try_parse_from([
            "rtpvisor",
            "--ari-request-timeout-ms",
            "75",
            "--max-restarts",
            "9",
            "--restart-window-ms",
            "60000",
        ])
        .unwrap();
        let config = Config::load(&cli, &env).unwrap();
        assert_eq!(config.ari.request_timeout_ms, 75);
        assert_eq!(
            config.supervision,
            SupervisionConfig {
                max_restarts: 9,
                window_ms: 60_000,
                media_stall_ms: 2000,
            }
        );
        let message = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_MAX_RESTARTS", "0")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "invalid RTPVISOR_MAX_RESTARTS=\"0\": 0 is outside 1..=1000"
        );
        let cli = Cli::try_parse_from(["rtpvisor", "--restart-window-ms", "50"]).unwrap();
        assert_eq!(
            Config::load(&cli, &no_env).unwrap_err().to_string(),
            "invalid --restart-window-ms \"50\": 50 ms is outside 100..=600000 ms"
        );
        let message = Config::from_toml_str("[supervision]\nmax_restarts = 0", "f.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "invalid supervision.max_restarts in f.toml: 0 is outside 1..=1000"
        );
    }

    #[test]
    fn printed_config_has_the_new_sections() {
        let text = Config::default().to_toml_redacted();
        assert!(
            text.contains("[supervision]\nmax_restarts = 5\nwindow_ms = 10000\n"),
            "{text}"
        );
        assert!(text.contains("[faults]\nenabled = false\n"), "{text}");
        assert!(text.contains("request_timeout_ms = 5000\n"), "{text}");
    }

    #[test]
    fn port_range_text_forms() {
        let single = PortRangeSetting::parse(" 10000 ").unwrap();
        assert_eq!(
            single,
            PortRangeSetting {
                start: 10000,
                end: 10000
            }
        );
        assert_eq!(single.to_string(), "10000");
        assert_eq!(single.len(), 1);
        let range = PortRangeSetting::parse("1 - 65535").unwrap();
        assert_eq!(range.to_string(), "1-65535");
        assert_eq!(range.len(), 65535);
        assert!(range.contains(1) && range.contains(65535) && !range.contains(0));
        assert!(!range.is_empty());
        assert!(PortRangeSetting::parse("1-2-3").is_err());
    }
}
