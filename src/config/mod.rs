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
//! # One declaration per setting
//!
//! Every setting is one row of the `settings!` invocation below: its section and key (the TOML
//! key, `media.rtp_ports`), type, default, doc comment, environment variable (`RTP_PORTS` is
//! `RTPVISOR_RTP_PORTS`; the flag, `--rtp-ports`, is derived from it), the value name `--help`
//! shows, and the parser that judges its text. From that row the macro makes the struct field
//! (with the doc) and its `Default`, and a row of `SETTINGS`, from which the file keys and the
//! "known keys" lists, the environment lookup, the flags with their `--help` line (the doc, the
//! default and the variable), and every error message are derived.
//!
//! To add a setting: add its row in its section (doc, `name: Type = default, env NAME, value
//! "VALUE", parse PARSER;`), with a parser `fn(&str) -> Result<Type, String>` whose error is the
//! reason alone (the message around it names the setting and the source); a type new to
//! configuration implements `SettingValue` (its TOML kind and text form). Add the row to
//! README's table, and to the tests three sample values (`samples`) and the setting's names
//! (`every_setting_keeps_its_documented_names`). A check between settings goes in
//! `Draft::finish`.
//!
//! # Layering
//!
//! [figment] merges the sources, each a provider: the defaults (`Serialized::defaults`), then
//! the file, the environment and the flags, each a `Layer` of text values. figment keeps, for
//! every value, the provider it came from, and each provider's metadata says how that source
//! names a key (`RTPVISOR_RTP_PORTS`, `--rtp-ports`, `media.rtp_ports in FILE at line 3`):
//! exactly what an error message needs. Not clap's `env` support: clap reads the process
//! environment itself (the tests could not inject theirs), knows nothing of the file beneath
//! the variables, and would judge a variable with its own parsers and messages. Every source is judged on its own before the merge,
//! so a broken value is reported even when a later source overrides it, and every source goes
//! through the same string parser per setting, so a value is judged the same way wherever it was
//! written.
//!
//! Secrets (the ARI password, the API token) are held in [`Secret`] (a `secrecy::SecretString`):
//! `Debug`, serialization (`--print-config`) and every error message show [`REDACTED`] or
//! `(hidden)`, never the value.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use figment::providers::Serialized;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use rtpvisor_actors::echo_guard::AllowList;
use rtpvisor_actors::mode::CallMode;
use rtpvisor_actors::ports::PortRange;
use secrecy::{ExposeSecret, SecretString};
use serde::{Serialize, Serializer};

mod parse;
use parse::*;

/// What a secret serializes as, so `--print-config` never shows it.
pub const REDACTED: &str = "***";

/// The development password of `asterisk-conf/ari.conf`, refused toward a non-loopback ARI host
/// unless `ari.allow_dev_password`.
pub const DEV_PASSWORD: &str = "rtpvisor";

/// Shortest API token accepted: a guessable token protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;

/// How to make an API token and where to put it, for the messages that ask for one.
pub const TOKEN_HOWTO: &str = "make a token with `openssl rand -hex 32 > FILE` and name FILE in \
     http.token_file (RTPVISOR_HTTP_TOKEN_FILE), or set it in http.token (RTPVISOR_HTTP_TOKEN)";

/// Environment variable naming the TOML file (same as `--config`).
pub const CONFIG_ENV: &str = "RTPVISOR_CONFIG";

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

fn serialize_display<T: fmt::Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

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
        /// `--http-addr "abc"` or `media.rtp_ports in /etc/rtpvisor.toml at line 3`.
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
    #[error("unknown key {given}; known keys here: {known}")]
    UnknownKey {
        /// Full dotted key (`media.rtp_port`).
        key: String,
        /// The key with its file and line: `media.rtp_port in /etc/rtpvisor.toml at line 3`.
        given: String,
        /// The keys accepted at that level, comma separated.
        known: String,
    },
}

/// Declares the configuration structs and the `SETTINGS` table from one row per setting; see
/// the module doc. Every row begins with its doc comment (the field's doc and the flag's help).
macro_rules! settings {
    (
        $(
            section $section:ident: $Section:ident, $section_doc:literal;
            $(
                $(#[doc = $doc:literal])+
                $field:ident: $ty:ty = $default:expr,
                    env $env:ident, value $value:literal, parse $parse:expr
                    $(, serde($($serde:tt)*))?;
            )+
        )+
        top;
        $(
            $(#[doc = $top_doc:literal])+
            $top:ident: $top_ty:ty = $top_default:expr,
                env $top_env:ident, value $top_value:literal, parse $top_parse:expr;
        )+
    ) => {
        /// The effective configuration of the service.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct Config {
            $( #[doc = $section_doc] pub $section: $Section, )+
            $( $(#[doc = $top_doc])+ pub $top: $top_ty, )+
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $section: $Section::default(), )+ $( $top: $top_default, )+ }
            }
        }

        $(
            #[doc = $section_doc]
            #[derive(Debug, Clone, PartialEq, Serialize)]
            pub struct $Section {
                $( $(#[doc = $doc])+ $(#[serde($($serde)*)])? pub $field: $ty, )+
            }

            impl Default for $Section {
                fn default() -> Self {
                    $Section { $( $field: $default, )+ }
                }
            }
        )+

        /// Every setting, in file order.
        static SETTINGS: &[Setting] = &[
            $( $(
                Setting {
                    key: concat!(stringify!($section), ".", stringify!($field)),
                    env: concat!("RTPVISOR_", stringify!($env)),
                    value_name: $value,
                    doc: &[$($doc),+],
                    kind: <$ty as SettingValue>::KIND,
                    secret: <$ty as SettingValue>::SECRET,
                    set: |config, raw| {
                        config.$section.$field = ($parse)(raw)?;
                        Ok(())
                    },
                    text: |config| config.$section.$field.text(),
                    help_default: |config| config.$section.$field.help_text(),
                },
            )+ )+
            $(
                Setting {
                    key: stringify!($top),
                    env: concat!("RTPVISOR_", stringify!($top_env)),
                    value_name: $top_value,
                    doc: &[$($top_doc),+],
                    kind: <$top_ty as SettingValue>::KIND,
                    secret: <$top_ty as SettingValue>::SECRET,
                    set: |config, raw| {
                        config.$top = ($top_parse)(raw)?;
                        Ok(())
                    },
                    text: |config| config.$top.text(),
                    help_default: |config| config.$top.help_text(),
                },
            )+
        ];
    };
}

settings! {
    section ari: AriConfig, "Connection to Asterisk ARI: where it is, who we are to it, and the link's timing.";
        /// ARI base URL, http:// or https:// (TLS for REST and the events WebSocket); a trailing
        /// slash is dropped, credentials in it (user:pw@) are refused: a URL ends up in logs
        url: String = "http://127.0.0.1:8088/ari".into(),
            env ARI_URL, value "URL", parse parse_url;
        /// ARI user (HTTP basic auth, so no ':')
        user: String = "rtpvisor".into(),
            env ARI_USER, value "USER", parse parse_user;
        /// ARI password; prefer the env var or file, flags are visible in `ps`. The development
        /// default is refused toward a non-loopback host unless allow_dev_password
        password: Secret = Secret::new(DEV_PASSWORD),
            env ARI_PASSWORD, value "PASSWORD", parse |raw| parse_password(raw).map(|pw| Secret::new(&pw)),
            serde(skip_serializing_if = "Secret::is_from_file");
        /// File holding the ARI password (e.g. a Docker secret), trailing newline dropped;
        /// excludes the password setting
        password_file: Option<String> = None,
            env ARI_PASSWORD_FILE, value "FILE", parse some(parse_path),
            serde(skip_serializing_if = "Option::is_none");
        /// Allow the development password (rtpvisor) toward a non-loopback ARI host (a private
        /// network only the two containers share, as in docker-compose.yml)
        allow_dev_password: bool = false,
            env ARI_ALLOW_DEV_PASSWORD, value "BOOL", parse parse_bool;
        /// PEM file of the CA that signed Asterisk's certificate, for https:// ARI; none:
        /// Mozilla's roots, compiled in
        ca_file: Option<String> = None,
            env ARI_CA_FILE, value "FILE", parse some(parse_path),
            serde(skip_serializing_if = "Option::is_none");
        /// Stasis application name; it goes unescaped into the events URL and REST paths
        app: String = "rtpvisor".into(),
            env ARI_APP, value "NAME", parse parse_app;
        /// First reconnect delay after the events WebSocket drops, 1-600000 ms
        reconnect_min_ms: u64 = 200,
            env ARI_RECONNECT_MIN_MS, value "MS", parse |raw| parse_ms(raw, 1..=MAX_DURATION_MS);
        /// Cap of the exponential reconnect delay, 1-600000 ms
        reconnect_max_ms: u64 = 5000,
            env ARI_RECONNECT_MAX_MS, value "MS", parse |raw| parse_ms(raw, 1..=MAX_DURATION_MS);
        /// Timeout of one ARI REST request, 1-600000 ms
        request_timeout_ms: u64 = 5000,
            env ARI_REQUEST_TIMEOUT_MS, value "MS", parse |raw| parse_ms(raw, 1..=MAX_DURATION_MS);
        /// How often the ARI events WebSocket is pinged, 100-600000 ms
        ping_interval_ms: u64 = 5000,
            env ARI_PING_INTERVAL_MS, value "MS", parse |raw| parse_ms(raw, 100..=MAX_DURATION_MS);
        /// The ARI link is declared dead when a ping gets no answer (nor any other frame)
        /// within this, 100-600000 ms
        ping_timeout_ms: u64 = 5000,
            env ARI_PING_TIMEOUT_MS, value "MS", parse |raw| parse_ms(raw, 100..=MAX_DURATION_MS);

    section media: MediaConfig, "Per-call media sockets and timing.";
        /// Address Asterisk sends RTP to (IP or hostname of this host as Asterisk sees it)
        host: String = "127.0.0.1".into(),
            env MEDIA_HOST, value "HOST", parse parse_host;
        /// Local IP the per-call RTP sockets bind to
        bind_ip: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            env MEDIA_BIND_IP, value "IP", parse parse_ip;
        /// UDP ports leased to calls, START-END inclusive or a single PORT
        rtp_ports: PortRange = PortRange { start: 10000, end: 10100 },
            env RTP_PORTS, value "START-END", parse PortRange::parse_reason,
            serde(serialize_with = "serialize_display");
        /// How long a released port rests before reuse, ms, so stray packets of the old call do
        /// not land in the next one
        quarantine_ms: u64 = 2000,
            env QUARANTINE_MS, value "MS", parse |raw| parse_ms(raw, 0..=MAX_DURATION_MS);
        /// Lateness threshold for a packet, ms, above 0
        late_ms: f64 = 20.0,
            env LATE_MS, value "MS", parse parse_late_ms;
        /// How long a probe packet may take to come back before it counts as lost, 1-10000 ms
        probe_timeout_ms: u64 = 2000,
            env PROBE_TIMEOUT_MS, value "MS", parse |raw| parse_ms(raw, PROBE_TIMEOUT_RANGE_MS);
        /// Hang up calls without media for this long, ms; 0 is off
        no_media_timeout_ms: u64 = 30_000,
            env NO_MEDIA_TIMEOUT_MS, value "MS", parse |raw| parse_ms(raw, 0..=MAX_NO_MEDIA_TIMEOUT_MS);
        /// While the ARI link is down, end calls locally whose media stopped for this long, ms;
        /// 0 is off
        link_down_silence_ms: u64 = 5000,
            env LINK_DOWN_SILENCE_MS, value "MS", parse |raw| parse_ms(raw, 0..=MAX_DURATION_MS);
        /// Concurrent calls admitted, every mode counted; 0 means the port pool's size
        max_calls: u32 = 0,
            env MAX_CALLS, value "N", parse parse_max_calls;
        /// Media mode for calls that do not ask for one: echo, probe or shared-echo
        default_mode: CallMode = CallMode::Echo,
            env DEFAULT_MODE, value "MODE", parse parse_mode;

    section echo: EchoConfig, "The shared echo socket that `shared-echo` calls use.";
        /// Bind address of the shared echo socket, IP:PORT; its port is the one Asterisk is sent
        /// to, so not 0
        addr: SocketAddr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 4000)),
            env ECHO_ADDR, value "IP:PORT", parse parse_echo_addr;
        /// Address Asterisk uses to reach the echo port; none: media.host
        host: Option<String> = None,
            env ECHO_HOST, value "HOST", parse some(parse_host),
            serde(skip_serializing_if = "Option::is_none");
        /// Source networks the echo answers, comma-separated CIDRs (IPv4 and IPv6); the default
        /// is this host only, as the other defaults assume Asterisk here
        allow: AllowList = AllowList::loopback(),
            env ECHO_ALLOW, value "CIDR,...", parse |raw: &str| raw.parse::<AllowList>().map_err(|e| e.to_string()),
            serde(serialize_with = "serialize_display");
        /// Datagrams per second the echo answers per source (address and port), 0-10000000; 0
        /// is no limit (a call sends 50)
        rate_pps: u32 = 200,
            env ECHO_RATE_PPS, value "PPS", parse |raw| parse_count(raw, ECHO_RATE_RANGE, "datagrams per second");
        /// Datagrams a source may send at once above its rate, 1-10000000
        burst: u32 = 400,
            env ECHO_BURST, value "N", parse |raw| parse_count(raw, ECHO_BURST_RANGE, "datagrams");
        /// Largest datagram the echo answers, 1-2048 bytes (an Ethernet MTU by default)
        max_bytes: u32 = 1500,
            env ECHO_MAX_BYTES, value "BYTES", parse |raw| parse_count(raw, ECHO_MAX_BYTES_RANGE, "bytes");
        /// Shared echo worker threads, each with its own socket on the echo port (SO_REUSEPORT),
        /// 1-1024; the default is this machine's number of cores
        workers: u32 = default_echo_workers(),
            env ECHO_WORKERS, value "N", parse |raw| parse_count(raw, ECHO_WORKERS_RANGE, "workers");

    section http: HttpConfig, "The HTTP API listener.";
        /// Listen address of the HTTP API, IP:PORT (port 0: the OS picks one); beyond loopback
        /// it needs a token, or allow_open
        addr: SocketAddr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            env HTTP_ADDR, value "IP:PORT", parse parse_socket_addr;
        /// Bearer token required by every HTTP route but /health and /ready, at least 16 visible
        /// ASCII characters; prefer the env var or file
        token: Option<Secret> = None,
            env HTTP_TOKEN, value "TOKEN", parse |raw| parse_token(raw).map(|t| Some(Secret::new(&t))),
            serde(skip_serializing_if = "token_not_printed");
        /// File holding the HTTP API token (e.g. a Docker secret), trailing newline dropped;
        /// excludes the token setting
        token_file: Option<String> = None,
            env HTTP_TOKEN_FILE, value "FILE", parse some(parse_path),
            serde(skip_serializing_if = "Option::is_none");
        /// Let the HTTP API listen beyond loopback without a token: whoever reaches it reads
        /// every live call. Only for a network no one else reaches
        allow_open: bool = false,
            env HTTP_ALLOW_OPEN, value "BOOL", parse parse_bool;

    section supervision: SupervisionConfig, "Restart intensity, OTP style: how many actor failures are tolerated within a sliding window before the service escalates, and when the media engine counts as stalled.";
        /// Actor failures (panics) tolerated within the restart window before the service
        /// escalates, 1-1000
        max_restarts: u32 = 5,
            env MAX_RESTARTS, value "N", parse |raw| parse_count(raw, MAX_RESTARTS_RANGE, "restarts");
        /// Window in which actor failures are counted against max_restarts, 100-600000 ms
        window_ms: u64 = 10_000,
            env RESTART_WINDOW_MS, value "MS", parse |raw| parse_ms(raw, RESTART_WINDOW_RANGE_MS);
        /// The media engine counts as stalled (the process escalates) after this long without a
        /// loop turn, 500-60000 ms; also the bound of every request to it
        media_stall_ms: u64 = 2000,
            env MEDIA_STALL_MS, value "MS", parse |raw| parse_ms(raw, MEDIA_STALL_RANGE_MS);

    section faults: FaultsConfig, "Fault injection for tests; off by default.";
        /// Enable the fault-injection HTTP routes (/faults/...): for tests only, never in production
        enabled: bool = false,
            env FAULT_INJECTION, value "BOOL", parse parse_bool;

    top;
        /// How long shutdown waits for calls to end, ms
        shutdown_timeout_ms: u64 = 5000,
            env SHUTDOWN_TIMEOUT_MS, value "MS", parse |raw| parse_ms(raw, 0..=MAX_DURATION_MS);
}

impl HttpConfig {
    /// Whether the API answers other hosts without a token: a non-loopback `addr` (the
    /// wildcard included) and no `token`. Refused at start unless `allow_open`.
    pub fn open_beyond_loopback(&self) -> bool {
        self.token.is_none() && !self.addr.ip().to_canonical().is_loopback()
    }
}

/// One setting as every source names it, with its parser and its printer (made by `settings!`).
struct Setting {
    /// Dotted TOML key (`media.rtp_ports`), also the canonical name in errors.
    key: &'static str,
    /// Environment variable (`RTPVISOR_RTP_PORTS`); the flag is derived from it.
    env: &'static str,
    /// What `--help` calls the value (`START-END`).
    value_name: &'static str,
    /// The doc comment's lines: the flag's help.
    doc: &'static [&'static str],
    /// TOML types the file accepts.
    kind: Kind,
    /// Its value never appears in messages.
    secret: bool,
    /// Parses the text and stores it; the error is the reason only.
    set: fn(&mut Config, &str) -> Result<(), String>,
    /// The value in the text form the sources accept (secrets redacted).
    text: fn(&Config) -> String,
    /// The value as `--help` shows a default (a built-in secret is public: the dev password).
    help_default: fn(&Config) -> String,
}

impl Setting {
    /// `--rtp-ports` for `RTPVISOR_RTP_PORTS`.
    fn flag(&self) -> String {
        let name = self.env.strip_prefix("RTPVISOR_").unwrap_or(self.env);
        format!("--{}", name.to_ascii_lowercase().replace('_', "-"))
    }

    fn section(&self) -> Option<&'static str> {
        self.key.split_once('.').map(|(section, _)| section)
    }

    /// The `--help` line: the doc, the built-in default and the variable.
    fn help(&self) -> String {
        let doc: Vec<&str> = self.doc.iter().map(|line| line.trim()).collect();
        let default = (self.help_default)(&Config::default());
        format!("{} [default: {default}] [env: {}]", doc.join(" "), self.env)
    }
}

/// The setting with TOML key `key`; every key the code names is one of [`SETTINGS`].
fn setting(key: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|setting| setting.key == key)
        .unwrap_or_else(|| panic!("{key} is not a setting"))
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

/// A type a setting can have: how the file writes it and how it is printed back as text.
trait SettingValue {
    /// The TOML types the file accepts for it.
    const KIND: Kind;
    /// Whether the value is never shown.
    const SECRET: bool = false;
    /// The value in the text form the sources accept ([`REDACTED`] for a secret).
    fn text(&self) -> String;
    /// The value as `--help` shows a built-in default.
    fn help_text(&self) -> String {
        self.text()
    }
}

macro_rules! text_by_display {
    ($kind:expr => $($ty:ty),+) => {
        $(impl SettingValue for $ty {
            const KIND: Kind = $kind;
            fn text(&self) -> String {
                self.to_string()
            }
        })+
    };
}

text_by_display!(Kind::Str => String, IpAddr, SocketAddr, AllowList, CallMode);
text_by_display!(Kind::Int => u32, u64);
text_by_display!(Kind::Num => f64);
text_by_display!(Kind::Bool => bool);
text_by_display!(Kind::StrOrInt => PortRange);

impl SettingValue for Secret {
    const KIND: Kind = Kind::Str;
    const SECRET: bool = true;
    fn text(&self) -> String {
        REDACTED.to_owned()
    }
    fn help_text(&self) -> String {
        self.expose().to_owned()
    }
}

/// Unset (`None`) prints as `none`; the setting's doc says what that means.
impl<T: SettingValue> SettingValue for Option<T> {
    const KIND: Kind = T::KIND;
    const SECRET: bool = T::SECRET;
    fn text(&self) -> String {
        self.as_ref().map_or_else(|| "none".to_owned(), T::text)
    }
    fn help_text(&self) -> String {
        self.as_ref().map_or_else(|| "none".to_owned(), T::help_text)
    }
}

/// A parser for an optional setting: a value given is `Some`.
fn some<T>(parse: fn(&str) -> Result<T, String>) -> impl Fn(&str) -> Result<Option<T>, String> {
    move |raw| parse(raw).map(Some)
}

/// Command line: `--config`, `--print-config`, and one flag per setting (named after its
/// environment variable, see `Setting::flag`). Every value is taken as text and judged by
/// [`Config::load`], so a bad flag gets the same kind of message as a bad file key or variable.
/// Built from the settings table at run time (`CommandFactory`), so no setting has a flag to
/// write by hand.
#[derive(Clone, Default)]
pub struct Cli {
    /// TOML config file (`--config FILE`; else `RTPVISOR_CONFIG`).
    pub config: Option<String>,
    /// `--print-config`: print the effective configuration as TOML (secrets redacted) and exit.
    pub print_config: bool,
    /// The setting flags given, by TOML key, as text; secret ones only in a `SecretString`.
    flags: Vec<(&'static str, FlagValue)>,
}

#[derive(Clone)]
enum FlagValue {
    Text(String),
    Secret(SecretString),
}

impl Cli {
    /// The text given to the flag of setting `key` (its TOML key), if any.
    pub fn flag(&self, key: &str) -> Option<&str> {
        self.flags.iter().find(|(k, _)| *k == key).map(|(_, value)| match value {
            FlagValue::Text(text) => text.as_str(),
            FlagValue::Secret(secret) => secret.expose_secret(),
        })
    }
}

/// Secret flags show as [`REDACTED`].
impl fmt::Debug for Cli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Cli");
        s.field("config", &self.config).field("print_config", &self.print_config);
        for (key, value) in &self.flags {
            match value {
                FlagValue::Text(text) => s.field(key, text),
                FlagValue::Secret(_) => s.field(key, &REDACTED),
            };
        }
        s.finish()
    }
}

const ABOUT: &str =
    "Supervises Asterisk call media over ARI: per-call RTP ports, echo and probe media, latency metrics.";

impl clap::CommandFactory for Cli {
    fn command() -> clap::Command {
        use clap::{Arg, ArgAction};
        let config = Arg::new("config").long("config").value_name("FILE").help(format!(
            "TOML config file; unknown keys are errors [default: none] [env: {CONFIG_ENV}]"
        ));
        let print_config = Arg::new("print_config")
            .long("print-config")
            .action(ArgAction::SetTrue)
            .help("Print the effective configuration as TOML (secrets redacted) and exit");
        let flags = SETTINGS.iter().map(|setting| {
            Arg::new(setting.key)
                .long(setting.flag()[2..].to_owned())
                .value_name(setting.value_name)
                .help(setting.help())
        });
        clap::Command::new("rtpvisor")
            .version(env!("CARGO_PKG_VERSION"))
            .about(ABOUT)
            .long_about(format!(
                "{ABOUT}\n\nSettings come from built-in defaults, then the TOML file (--config or \
                 {CONFIG_ENV}), then RTPVISOR_* environment variables, then these flags; later \
                 sources win."
            ))
            .arg(config)
            .args(flags)
            .arg(print_config)
    }

    fn command_for_update() -> clap::Command {
        Self::command()
    }
}

impl clap::FromArgMatches for Cli {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut cli = Cli::default();
        cli.update_from_arg_matches(matches)?;
        Ok(cli)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = matches.get_one::<String>("config") {
            self.config = Some(path.clone());
        }
        self.print_config |= matches.get_flag("print_config");
        for setting in SETTINGS {
            if let Some(text) = matches.get_one::<String>(setting.key) {
                let value = if setting.secret {
                    FlagValue::Secret(SecretString::from(text.clone()))
                } else {
                    FlagValue::Text(text.clone())
                };
                self.flags.retain(|(key, _)| *key != setting.key);
                self.flags.push((setting.key, value));
            }
        }
        Ok(())
    }
}

impl clap::Parser for Cli {}

/// figment's name for each source of ours; [`Origin::of`] reads it back. Values from any other
/// provider are the built-in defaults.
const FILE_SOURCE: &str = "TOML file";
const ENV_SOURCE: &str = "environment variable";
const FLAG_SOURCE: &str = "command-line flag";

/// One source's values, as text, by setting: a figment provider. Its metadata names the source
/// and, through its interpolater, how that source writes a key.
struct Layer {
    metadata: Metadata,
    values: Vec<(&'static Setting, String)>,
}

impl Layer {
    fn env(env: &dyn Fn(&str) -> Option<String>) -> Layer {
        Layer {
            metadata: Metadata::named(ENV_SOURCE)
                .interpolater(|_: &Profile, keys: &[&str]| setting(&keys.join(".")).env.to_owned()),
            values: SETTINGS
                .iter()
                .filter_map(|setting| Some((setting, env(setting.env)?)))
                .collect(),
        }
    }

    fn flags(cli: &Cli) -> Layer {
        Layer {
            metadata: Metadata::named(FLAG_SOURCE)
                .interpolater(|_: &Profile, keys: &[&str]| setting(&keys.join(".")).flag()),
            values: SETTINGS
                .iter()
                .filter_map(|setting| Some((setting, cli.flag(setting.key)?.to_owned())))
                .collect(),
        }
    }

    /// The TOML `text` (the file `origin`): keys checked against [`SETTINGS`], each value
    /// checked against its setting's TOML types and turned into text.
    fn file(text: &str, origin: &str) -> Result<Layer, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|error| {
            let (line, column) = line_column(text, error.span().map_or(0, |span| span.start));
            ConfigError::Syntax {
                origin: origin.to_owned(),
                line,
                column,
                message: one_line(error.message()),
            }
        })?;
        let lines = Arc::new(key_lines(text));
        let origin = origin.to_owned();
        let named = move |key: &str| match lines.get(key) {
            Some(line) => format!("{key} in {origin} at line {line}"),
            None => format!("{key} in {origin}"),
        };
        // Keys are checked against SETTINGS by hand rather than by serde's deny_unknown_fields:
        // serde's message names only the leaf (`unknown field "port"`), not its table.
        let mut values = Vec::new();
        for (name, value) in &table {
            if let Some(setting) = SETTINGS.iter().find(|setting| setting.key == name) {
                values.push((setting, file_text(setting, value, named(name))?));
                continue;
            }
            if !SETTINGS.iter().any(|setting| setting.section() == Some(name)) {
                return Err(unknown_key(name, named(name), None));
            }
            let Some(section) = value.as_table() else {
                return Err(ConfigError::Invalid {
                    setting: name.clone(),
                    given: named(name),
                    reason: format!("expected a table [{name}], got {}", value.type_str()),
                });
            };
            for (leaf, value) in section {
                let key = format!("{name}.{leaf}");
                let Some(setting) = SETTINGS.iter().find(|setting| setting.key == key) else {
                    return Err(unknown_key(&key, named(&key), Some(name)));
                };
                values.push((setting, file_text(setting, value, named(&key))?));
            }
        }
        let metadata = Metadata::named(FILE_SOURCE)
            .interpolater(move |_: &Profile, keys: &[&str]| named(&keys.join(".")));
        Ok(Layer { metadata, values })
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (setting, raw) in &self.values {
            let value = Value::from(raw.clone());
            match setting.key.split_once('.') {
                Some((section, leaf)) => {
                    if let Value::Dict(_, table) =
                        dict.entry(section.to_owned()).or_insert_with(|| Value::from(Dict::new()))
                    {
                        table.insert(leaf.to_owned(), value);
                    }
                }
                None => {
                    dict.insert(setting.key.to_owned(), value);
                }
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// A file value as the text its setting's parser takes, if its TOML type fits the setting.
fn file_text(setting: &Setting, value: &toml::Value, given: String) -> Result<String, ConfigError> {
    use toml::Value;
    match (setting.kind, value) {
        (Kind::Str | Kind::StrOrInt, Value::String(text)) => Ok(text.clone()),
        (Kind::Int | Kind::Num | Kind::StrOrInt, Value::Integer(number)) => Ok(number.to_string()),
        (Kind::Num, Value::Float(number)) => Ok(number.to_string()),
        (Kind::Bool, Value::Boolean(flag)) => Ok(flag.to_string()),
        (kind, other) => {
            let got = match other {
                Value::Array(_) | Value::Table(_) => other.type_str().to_owned(),
                _ if setting.secret => other.type_str().to_owned(),
                _ => format!("{} {other}", other.type_str()),
            };
            Err(ConfigError::Invalid {
                setting: setting.key.to_owned(),
                given,
                reason: format!("expected {}, got {got}", kind.expected()),
            })
        }
    }
}

/// The line of every key of a TOML text that parses: `media.rtp_ports` -> 3.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let mut lines = BTreeMap::new();
    let Ok(document) = toml::de::DeTable::parse(text) else {
        return lines;
    };
    let line_of = |offset: usize| line_column(text, offset).0;
    for (key, value) in document.get_ref() {
        lines.insert(key.get_ref().to_string(), line_of(key.span().start));
        if let toml::de::DeValue::Table(section) = value.get_ref() {
            for (leaf, _) in section {
                lines.insert(format!("{}.{}", key.get_ref(), leaf.get_ref()), line_of(leaf.span().start));
            }
        }
    }
    lines
}

/// Where the current value of a setting came from, as the messages name it.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    Default,
    /// `named`: the key with the file and line (`media.rtp_ports in f.toml at line 3`).
    File { named: String },
    /// `named`: the variable; `raw`: its value (empty for a secret: messages show `(hidden)`).
    Env { named: String, raw: String },
    /// `named`: the flag; `raw` as for `Env`.
    Flag { named: String, raw: String },
}

impl Origin {
    /// The origin of `raw`, a value of `setting` that the source of `metadata` gave.
    fn of(metadata: &Metadata, setting: &Setting, raw: &str) -> Origin {
        let keys: Vec<&str> = setting.key.split('.').collect();
        let named = metadata.interpolate(&Profile::Default, &keys);
        // A secret's origin keeps no copy of it.
        let raw = if setting.secret { String::new() } else { raw.to_owned() };
        match metadata.name.as_ref() {
            FILE_SOURCE => Origin::File { named },
            ENV_SOURCE => Origin::Env { named, raw },
            FLAG_SOURCE => Origin::Flag { named, raw },
            _ => Origin::Default,
        }
    }

    /// Precedence: a higher rank overrides a lower one.
    fn rank(&self) -> u8 {
        match self {
            Origin::Default => 0,
            Origin::File { .. } => 1,
            Origin::Env { .. } => 2,
            Origin::Flag { .. } => 3,
        }
    }

    /// The setting as the operator wrote it, e.g. `RTPVISOR_RTP_PORTS="1-0"`. Values are shown
    /// Debug-quoted so control characters cannot break the one-line message, with credentials
    /// of a URL hidden; a secret is never shown.
    fn describe(&self, setting: &Setting, config: &Config) -> String {
        let shown = |raw: &str| {
            if setting.secret {
                "(hidden)".to_owned()
            } else {
                format!("{:?}", hide_url_credentials(raw))
            }
        };
        match self {
            Origin::Default => {
                format!("{} = {} (built-in default)", setting.key, (setting.text)(config))
            }
            Origin::File { named } => named.clone(),
            Origin::Env { named, raw } => format!("{named}={}", shown(raw)),
            Origin::Flag { named, raw } => format!("{named} {}", shown(raw)),
        }
    }

    fn empty_hint(&self) -> &'static str {
        match self {
            Origin::Default => "empty",
            Origin::File { .. } => "empty; remove the key to use the default",
            Origin::Env { .. } => "empty; unset the variable to use the default",
            Origin::Flag { .. } => "empty; omit the flag to use the default",
        }
    }
}

/// A configuration being merged, with the origin of every value that is not a default.
struct Draft {
    config: Config,
    origins: HashMap<&'static str, Origin>,
}

impl Draft {
    fn new() -> Self {
        Draft {
            config: Config::default(),
            origins: HashMap::new(),
        }
    }

    /// Judges every source on its own (so a broken variable left in a unit file bites even
    /// while a flag overrides it), merges them with figment over the defaults, and parses each
    /// setting's winning value, keeping where it came from.
    fn merge(layers: Vec<Layer>) -> Result<Draft, ConfigError> {
        for layer in &layers {
            let mut alone = Draft::new();
            for &(setting, ref raw) in &layer.values {
                alone.set(setting, raw, Origin::of(&layer.metadata, setting, raw))?;
            }
        }
        let figment = layers
            .into_iter()
            .fold(Figment::from(Serialized::defaults(Config::default())), Figment::merge);
        let mut draft = Draft::new();
        for setting in SETTINGS {
            let Ok(value) = figment.find_value(setting.key) else {
                continue; // unset and without a default (an optional setting)
            };
            let (Some(raw), Some(metadata)) = (value.as_str(), figment.get_metadata(value.tag()))
            else {
                continue; // a built-in default (typed, not text)
            };
            let origin = Origin::of(metadata, setting, raw);
            if origin != Origin::Default {
                draft.set(setting, raw, origin)?;
            }
        }
        Ok(draft)
    }

    fn origin(&self, key: &str) -> &Origin {
        self.origins.get(key).unwrap_or(&Origin::Default)
    }

    fn invalid(&self, key: &str, origin: &Origin, reason: String) -> ConfigError {
        let setting = setting(key);
        ConfigError::Invalid {
            setting: setting.key.to_owned(),
            given: origin.describe(setting, &self.config),
            reason,
        }
    }

    /// Parses and stores one value.
    fn set(&mut self, setting: &'static Setting, raw: &str, origin: Origin) -> Result<(), ConfigError> {
        // An empty value is refused rather than read as "use the default": `RTPVISOR_RTP_PORTS=`
        // is far more often a broken template than a request for the default.
        let result = if raw.trim().is_empty() {
            Err(origin.empty_hint().to_owned())
        } else {
            (setting.set)(&mut self.config, raw)
        };
        if let Err(reason) = result {
            return Err(self.invalid(setting.key, &origin, reason));
        }
        self.origins.insert(setting.key, origin);
        Ok(())
    }

    /// Checks between settings, after all sources are merged, and the files they name.
    fn finish(mut self) -> Result<Config, ConfigError> {
        self.read_files()?;
        let config = &self.config;
        let (ports, echo_port) = (config.media.rtp_ports, config.echo.addr.port());
        // Both are UDP: a call leased the echo port would fail to bind or steal echo traffic.
        if ports.contains(echo_port) {
            return Err(self.conflict(
                "media.rtp_ports",
                format!("range {ports} contains the echo UDP port {echo_port}"),
                "echo.addr",
                format!("echo UDP port {echo_port} is inside the RTP port range {ports}"),
            ));
        }
        let ari = &config.ari;
        if ari.reconnect_min_ms > ari.reconnect_max_ms {
            return Err(self.conflict(
                "ari.reconnect_min_ms",
                format!("{} is above the maximum {}", ari.reconnect_min_ms, ari.reconnect_max_ms),
                "ari.reconnect_max_ms",
                format!("{} is below the minimum {}", ari.reconnect_max_ms, ari.reconnect_min_ms),
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
                let password = if ari.password.is_from_file() { "ari.password_file" } else { "ari.password" };
                return Err(self.conflict("ari.url", why.clone(), password, why));
            }
        }
        // The API shows every live call (numbers, names, media addresses): beyond loopback only
        // with a token, unless the operator says in so many words that it is meant to be open.
        if config.http.open_beyond_loopback() && !config.http.allow_open {
            return Err(self.invalid(
                "http.addr",
                self.origin("http.addr"),
                format!(
                    "the HTTP API would answer other hosts without a token, and it shows every \
                     live call: {TOKEN_HOWTO}; or bind http.addr to 127.0.0.1; or set \
                     http.allow_open (RTPVISOR_HTTP_ALLOW_OPEN) to leave it open on purpose"
                ),
            ));
        }
        if config.faults.enabled && config.http.token.is_none() {
            return Err(self.invalid(
                "faults.enabled",
                self.origin("faults.enabled"),
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
        let both = |value: &str, file: &str| format!("set either {value} or {file}, not both");
        if let Some(path) = self.config.ari.password_file.clone() {
            if self.origin("ari.password") != &Origin::Default {
                let why = both("ari.password", "ari.password_file");
                return Err(self.conflict("ari.password_file", why.clone(), "ari.password", why));
            }
            let password = self.read_secret("ari.password_file", &path, parse_password)?;
            self.config.ari.password = Secret::read_from_file(&password);
        }
        if let Some(path) = self.config.http.token_file.clone() {
            if self.origin("http.token") != &Origin::Default {
                let why = both("http.token", "http.token_file");
                return Err(self.conflict("http.token_file", why.clone(), "http.token", why));
            }
            let token = self.read_secret("http.token_file", &path, parse_token)?;
            self.config.http.token = Some(Secret::read_from_file(&token));
        }
        if let Some(path) = &self.config.ari.ca_file {
            if let Err(e) = rtpvisor_actors::ari::tls::load_ca_file(std::path::Path::new(path)) {
                return Err(self.invalid("ari.ca_file", self.origin("ari.ca_file"), e.to_string()));
            }
        }
        Ok(())
    }

    /// The content of a secret file without its trailing newline, judged by `parse`; errors
    /// never show the content.
    fn read_secret(
        &self,
        key: &str,
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
    fn conflict(&self, a: &str, a_reason: String, b: &str, b_reason: String) -> ConfigError {
        let (blamed, reason, other) = if self.origin(b).rank() > self.origin(a).rank() {
            (b, b_reason, a)
        } else {
            (a, a_reason, b)
        };
        let other_given = self.origin(other).describe(setting(other), &self.config);
        self.invalid(blamed, self.origin(blamed), format!("{reason} (set by {other_given})"))
    }
}

fn unknown_key(key: &str, given: String, section: Option<&str>) -> ConfigError {
    let mut known: Vec<&str> = Vec::new();
    for setting in SETTINGS {
        let name = match (section, setting.key.split_once('.')) {
            (Some(section), Some((owner, leaf))) if owner == section => leaf,
            (None, Some((owner, _))) => owner,
            (None, None) => setting.key,
            _ => continue,
        };
        if !known.contains(&name) {
            known.push(name);
        }
    }
    ConfigError::UnknownKey {
        key: key.to_owned(),
        given,
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
        let mut layers = Vec::new();
        let file = match (&cli.config, env(CONFIG_ENV)) {
            (Some(path), _) => Some((path.clone(), "--config")),
            (None, Some(path)) => Some((path, CONFIG_ENV)),
            (None, None) => None,
        };
        if let Some((path, given_by)) = file {
            if path.trim().is_empty() {
                let hint = if given_by == CONFIG_ENV {
                    "empty; unset the variable"
                } else {
                    "empty; omit the flag"
                };
                return Err(ConfigError::Invalid {
                    setting: "config".into(),
                    given: format!("{given_by} \"\""),
                    reason: format!("{hint} to use the default; without a file only built-in defaults apply"),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::ReadFile {
                path: path.clone(),
                given_by,
                error,
            })?;
            layers.push(Layer::file(&text, &path)?);
        }
        layers.push(Layer::env(env));
        layers.push(Layer::flags(cli));
        Draft::merge(layers)?.finish()
    }

    /// Built-in defaults overridden by the TOML `text`; `origin` (usually the file path) names
    /// the text in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Draft::merge(vec![Layer::file(text, origin)?])?.finish()
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
}

#[cfg(test)]
mod tests;
