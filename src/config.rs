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

/// What a secret serializes as, so `--print-config` never shows it.
pub const REDACTED: &str = "***";

/// The development password of `asterisk-conf/ari.conf`, refused toward a non-loopback ARI host
/// unless `ari.allow_dev_password`.
pub const DEV_PASSWORD: &str = "rtpvisor";

/// Shortest API token accepted: a guessable token protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;

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

    section http: HttpConfig, "The HTTP API listener.";
        /// Listen address of the HTTP API, IP:PORT (port 0: the OS picks one)
        addr: SocketAddr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9090)),
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

    section supervision: SupervisionConfig, "Restart intensity, OTP style: how many actor failures are tolerated within a sliding window before the service escalates, and when the media engine counts as stalled.";
        /// Actor failures (panics) tolerated within the restart window before the service
        /// escalates, 1-1000
        max_restarts: u32 = 5,
            env MAX_RESTARTS, value "N", parse parse_max_restarts;
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

fn parse_ip(raw: &str) -> Result<IpAddr, String> {
    raw.trim().parse().map_err(|_| "not an IP address".to_owned())
}

fn parse_mode(raw: &str) -> Result<CallMode, String> {
    raw.parse().map_err(|_| {
        let names: Vec<&str> = CallMode::ALL.iter().map(|mode| mode.as_str()).collect();
        format!("must be one of {}", names.join(", "))
    })
}

fn parse_echo_addr(raw: &str) -> Result<SocketAddr, String> {
    let addr = parse_socket_addr(raw)?;
    // Port 0 would bind a random port, while Asterisk is told the configured one.
    if addr.port() == 0 {
        return Err("port 0 is not allowed: Asterisk is sent to this port".into());
    }
    Ok(addr)
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

fn parse_socket_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.trim()
        .parse()
        .map_err(|_| "not an IP:port socket address (IPv6 as [::1]:9090)".to_owned())
}

// Reads the help text of a flag; used only by tests.
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

    fn is_secret(key: &str) -> bool {
        setting(key).secret
    }

    impl Config {
        /// The value of setting `key` in the text form the sources accept.
        fn value_text(&self, key: &str) -> String {
            (setting(key).text)(self)
        }

        /// Parses `raw` for setting `key` and stores it; the error is the reason alone.
        fn set(&mut self, key: &str, raw: &str) -> Result<(), String> {
            (setting(key).set)(self, raw)
        }
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

    fn cli_with(key: &str, value: &str) -> Cli {
        let flag = setting(key).flag();
        Cli::try_parse_from(["rtpvisor", &format!("{flag}={value}")]).unwrap()
    }

    /// TOML line for `key = raw`, inside its section.
    fn toml_line(key: &str, raw: &str) -> String {
        let spec = setting(key);
        let literal = match spec.kind {
            Kind::Int | Kind::Num | Kind::Bool => raw.to_owned(),
            Kind::Str | Kind::StrOrInt => format!("{raw:?}"),
        };
        match spec.key.split_once('.') {
            Some((section, leaf)) => format!("[{section}]\n{leaf} = {literal}\n"),
            None => format!("{} = {literal}\n", spec.key),
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
    fn companion_env(key: &str) -> Vec<(&'static str, &'static str)> {
        match key {
            "faults.enabled" => vec![("RTPVISOR_HTTP_TOKEN", TOKEN)],
            _ => Vec::new(),
        }
    }

    /// Three distinct valid values per setting (file, env, cli), in canonical text form.
    fn samples(key: &str) -> [&'static str; 3] {
        match key {
            "ari.url" => [
                "http://127.0.0.1:8088/ari",
                "https://localhost/ari",
                "http://[::1]:8088/ari",
            ],
            "ari.user" => ["fileuser", "envuser", "cliuser"],
            "ari.password" => ["filepw", "envpw", "clipw"],
            "ari.password_file" => [
                sample_file("pw1", "file-pw-1\n"),
                sample_file("pw2", "file-pw-2"),
                sample_file("pw3", "file-pw-3\r\n"),
            ],
            "ari.allow_dev_password" => ["true", "false", "true"],
            "ari.ca_file" => [
                sample_file("ca1.pem", CA_PEM),
                sample_file("ca2.pem", CA_PEM),
                sample_file("ca3.pem", CA_PEM),
            ],
            "ari.app" => ["file-app", "env_app", "cli.app"],
            "ari.reconnect_min_ms" => ["100", "150", "250"],
            "ari.reconnect_max_ms" => ["6000", "7000", "8000"],
            "ari.request_timeout_ms" => ["1000", "2000", "3000"],
            "media.host" => ["10.0.0.1", "pbx-peer.example.org", "::1"],
            "media.bind_ip" => ["10.0.0.2", "::", "192.168.1.1"],
            "media.rtp_ports" => ["20000-20010", "30000-30000", "40000-40100"],
            "media.quarantine_ms" => ["0", "100", "600000"],
            "media.late_ms" => ["5", "0.5", "60000"],
            "media.probe_timeout_ms" => ["1", "500", "10000"],
            "media.no_media_timeout_ms" => ["1000", "0", "3600000"],
            "media.link_down_silence_ms" => ["0", "1000", "600000"],
            "media.max_calls" => ["0", "4", "65536"],
            "supervision.media_stall_ms" => ["500", "1500", "60000"],
            "ari.ping_interval_ms" => ["100", "2500", "600000"],
            "ari.ping_timeout_ms" => ["200", "3000", "60000"],
            "media.default_mode" => ["probe", "shared-echo", "echo"],
            "echo.addr" => ["127.0.0.1:4001", "[::1]:4002", "0.0.0.0:4003"],
            "echo.host" => ["echo.example", "10.1.1.1", "fe80::1"],
            "echo.allow" => ["127.0.0.0/8,::1/128,172.31.250.0/24", "10.0.0.0/8", "0.0.0.0/0,::/0"],
            "echo.rate_pps" => ["0", "50", "10000000"],
            "echo.burst" => ["1", "100", "10000000"],
            "echo.max_bytes" => ["1", "172", "2048"],
            "http.addr" => ["127.0.0.1:0", "[::]:9091", "0.0.0.0:80"],
            "http.token" => ["file-token-0123456789", "env-token-0123456789", "cli-token-0123456789"],
            "http.token_file" => [
                sample_file("token1", "file-token-1-0123456789\n"),
                sample_file("token2", "file-token-2-0123456789"),
                sample_file("token3", "file-token-3-0123456789\n"),
            ],
            "supervision.max_restarts" => ["1", "20", "1000"],
            "supervision.window_ms" => ["100", "2500", "600000"],
            "faults.enabled" => ["true", "false", "true"],
            "shutdown_timeout_ms" => ["0", "1", "600000"],
            other => panic!("no samples for {other}"),
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
            PortRange {
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
        assert_eq!(config.media.default_mode, CallMode::Echo);
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
            PortRange {
                start: 20000,
                end: 20000
            }
        );
        assert_eq!(config.media.late_ms, 20.0);
        assert_eq!(config.media.default_mode, CallMode::SharedEcho);
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
        for spec in SETTINGS {
            let [file, _, _] = samples(spec.key);
            let mut text = toml_line(spec.key, file);
            if spec.key == "faults.enabled" {
                text = format!("[http]\ntoken = \"{TOKEN}\"\n{text}");
            }
            let config = Config::from_toml_str(&text, "t.toml")
                .unwrap_or_else(|e| panic!("{}: {e}", spec.key));
            assert_eq!(
                config.value_text(spec.key),
                displayed(spec.key, file),
                "{}",
                spec.key
            );
        }
    }

    /// What `value_text` shows for a sample (secrets are always redacted there).
    fn displayed(key: &str, sample: &str) -> String {
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
        for spec in SETTINGS {
            let [file_value, env_value, _] = samples(spec.key);
            let file = TempFile::new(spec.key, &toml_line(spec.key, file_value));
            let path = file.path();
            let mut env = vec![(CONFIG_ENV, path.as_str()), (spec.env, env_value)];
            env.extend(companion_env(spec.key));
            let config = Config::load(&Cli::default(), &env_of(&env))
                .unwrap_or_else(|e| panic!("{}: {e}", spec.key));
            assert_eq!(
                config.value_text(spec.key),
                displayed(spec.key, env_value),
                "{}",
                spec.key
            );
            if spec.key == "ari.password" {
                assert_eq!(password_of(&config), env_value);
            }
        }
    }

    #[test]
    fn each_flag_overrides_env() {
        for spec in SETTINGS {
            let [_, env_value, cli_value] = samples(spec.key);
            let mut env = vec![(spec.env, env_value)];
            env.extend(companion_env(spec.key));
            let config = Config::load(&cli_with(spec.key, cli_value), &env_of(&env))
                .unwrap_or_else(|e| panic!("{}: {e}", spec.key));
            assert_eq!(
                config.value_text(spec.key),
                displayed(spec.key, cli_value),
                "{}",
                spec.key
            );
            if spec.key == "ari.password" {
                assert_eq!(password_of(&config), cli_value);
            }
        }
    }

    /// The names operators already use: every file key, variable and flag, as documented.
    #[test]
    fn every_setting_keeps_its_documented_names() {
        let documented = [
            ("ari.url", "RTPVISOR_ARI_URL", "--ari-url"),
            ("ari.user", "RTPVISOR_ARI_USER", "--ari-user"),
            ("ari.password", "RTPVISOR_ARI_PASSWORD", "--ari-password"),
            ("ari.password_file", "RTPVISOR_ARI_PASSWORD_FILE", "--ari-password-file"),
            ("ari.allow_dev_password", "RTPVISOR_ARI_ALLOW_DEV_PASSWORD", "--ari-allow-dev-password"),
            ("ari.ca_file", "RTPVISOR_ARI_CA_FILE", "--ari-ca-file"),
            ("ari.app", "RTPVISOR_ARI_APP", "--ari-app"),
            ("ari.reconnect_min_ms", "RTPVISOR_ARI_RECONNECT_MIN_MS", "--ari-reconnect-min-ms"),
            ("ari.reconnect_max_ms", "RTPVISOR_ARI_RECONNECT_MAX_MS", "--ari-reconnect-max-ms"),
            ("ari.request_timeout_ms", "RTPVISOR_ARI_REQUEST_TIMEOUT_MS", "--ari-request-timeout-ms"),
            ("ari.ping_interval_ms", "RTPVISOR_ARI_PING_INTERVAL_MS", "--ari-ping-interval-ms"),
            ("ari.ping_timeout_ms", "RTPVISOR_ARI_PING_TIMEOUT_MS", "--ari-ping-timeout-ms"),
            ("media.host", "RTPVISOR_MEDIA_HOST", "--media-host"),
            ("media.bind_ip", "RTPVISOR_MEDIA_BIND_IP", "--media-bind-ip"),
            ("media.rtp_ports", "RTPVISOR_RTP_PORTS", "--rtp-ports"),
            ("media.quarantine_ms", "RTPVISOR_QUARANTINE_MS", "--quarantine-ms"),
            ("media.late_ms", "RTPVISOR_LATE_MS", "--late-ms"),
            ("media.probe_timeout_ms", "RTPVISOR_PROBE_TIMEOUT_MS", "--probe-timeout-ms"),
            ("media.no_media_timeout_ms", "RTPVISOR_NO_MEDIA_TIMEOUT_MS", "--no-media-timeout-ms"),
            ("media.link_down_silence_ms", "RTPVISOR_LINK_DOWN_SILENCE_MS", "--link-down-silence-ms"),
            ("media.max_calls", "RTPVISOR_MAX_CALLS", "--max-calls"),
            ("media.default_mode", "RTPVISOR_DEFAULT_MODE", "--default-mode"),
            ("echo.addr", "RTPVISOR_ECHO_ADDR", "--echo-addr"),
            ("echo.host", "RTPVISOR_ECHO_HOST", "--echo-host"),
            ("echo.allow", "RTPVISOR_ECHO_ALLOW", "--echo-allow"),
            ("echo.rate_pps", "RTPVISOR_ECHO_RATE_PPS", "--echo-rate-pps"),
            ("echo.burst", "RTPVISOR_ECHO_BURST", "--echo-burst"),
            ("echo.max_bytes", "RTPVISOR_ECHO_MAX_BYTES", "--echo-max-bytes"),
            ("http.addr", "RTPVISOR_HTTP_ADDR", "--http-addr"),
            ("http.token", "RTPVISOR_HTTP_TOKEN", "--http-token"),
            ("http.token_file", "RTPVISOR_HTTP_TOKEN_FILE", "--http-token-file"),
            ("supervision.max_restarts", "RTPVISOR_MAX_RESTARTS", "--max-restarts"),
            ("supervision.window_ms", "RTPVISOR_RESTART_WINDOW_MS", "--restart-window-ms"),
            ("supervision.media_stall_ms", "RTPVISOR_MEDIA_STALL_MS", "--media-stall-ms"),
            ("faults.enabled", "RTPVISOR_FAULT_INJECTION", "--fault-injection"),
            ("shutdown_timeout_ms", "RTPVISOR_SHUTDOWN_TIMEOUT_MS", "--shutdown-timeout-ms"),
        ];
        let actual: Vec<(&str, &str, String)> =
            SETTINGS.iter().map(|s| (s.key, s.env, s.flag())).collect();
        let expected: Vec<(&str, &str, String)> =
            documented.iter().map(|&(key, env, flag)| (key, env, flag.to_owned())).collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn an_overridden_value_is_still_judged() {
        // A broken variable under a valid flag: reported, so it cannot bite later when the
        // flag is removed.
        let cli = cli_with("media.rtp_ports", "20000-20010");
        let message = Config::load(&cli, &env_of(&[("RTPVISOR_RTP_PORTS", "2-1")])).unwrap_err().to_string();
        assert_eq!(message, "invalid RTPVISOR_RTP_PORTS=\"2-1\": start 2 is above end 1");
        // And the later source wins when both are valid.
        let config = Config::load(&cli, &env_of(&[("RTPVISOR_RTP_PORTS", "30000-30010")])).unwrap();
        assert_eq!(config.media.rtp_ports, PortRange { start: 20000, end: 20010 });
    }

    #[test]
    fn file_errors_name_the_line_of_the_key() {
        let text = "# rtpvisor\n\n[ari]\napp = \"a\"\n\n[media]\nhost = \"pbx\"\nlate_ms = -3\n";
        assert_eq!(
            Config::from_toml_str(text, "/etc/rtpvisor.toml").unwrap_err().to_string(),
            "invalid media.late_ms in /etc/rtpvisor.toml at line 8: must be a finite number above 0 and at most 60000 ms"
        );
        let text = "shutdown_timeout_ms = 1\n[media.rtp_ports]\n";
        assert!(Config::from_toml_str(text, "f.toml").unwrap_err().to_string().starts_with(
            "invalid media.rtp_ports in f.toml at line 2: expected a string like"
        ));
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
    const INVALID: &[(&str, &str, &str)] = &[
        (
            "ari.url",
            "ftp://pbx/ari",
            "must start with http:// or https://",
        ),
        ("ari.url", "http://", "no host"),
        ("ari.url", "http://pbx /ari", "whitespace"),
        ("ari.user", "a:b", "':'"),
        ("ari.app", "my/app", "'/'"),
        ("ari.app", "my app", "' '"),
        ("ari.allow_dev_password", "sure", "not a boolean"),
        ("ari.password_file", "/nonexistent/ari-password", "cannot read it"),
        ("ari.ca_file", "/nonexistent/ca.pem", "cannot read the CA file"),
        (
            "media.host",
            "0.0.0.0",
            "Asterisk must be able to send RTP to it",
        ),
        (
            "media.host",
            "::",
            "Asterisk must be able to send RTP to it",
        ),
        ("media.host", "pbx:5060", "not an IP address or host name"),
        ("media.bind_ip", "localhost", "not an IP address"),
        (
            "media.rtp_ports",
            "10100-10000",
            "start 10100 is above end 10000",
        ),
        ("media.rtp_ports", "0-100", "port 0"),
        (
            "media.rtp_ports",
            "10000-70000",
            "\"70000\" is not a port number",
        ),
        ("media.rtp_ports", "abc", "not a port number"),
        (
            "media.rtp_ports",
            "3990-4010",
            "contains the echo UDP port 4000",
        ),
        ("media.quarantine_ms", "-5", "must not be negative"),
        ("media.quarantine_ms", "2s", "not a whole number"),
        ("media.quarantine_ms", "600001", "outside 0..=600000"),
        ("media.late_ms", "0", "above 0"),
        ("media.late_ms", "-1", "above 0"),
        ("media.late_ms", "NaN", "finite"),
        ("media.late_ms", "inf", "finite"),
        ("media.late_ms", "x", "not a number"),
        ("media.probe_timeout_ms", "0", "outside 1..=10000"),
        ("media.probe_timeout_ms", "10001", "outside 1..=10000"),
        ("media.no_media_timeout_ms", "3600001", "outside 0..=3600000"),
        (
            "media.default_mode",
            "loop",
            "must be one of echo, probe, shared-echo",
        ),
        ("echo.addr", "4000", "not an IP:port socket address"),
        ("echo.addr", "0.0.0.0:0", "port 0 is not allowed"),
        (
            "echo.addr",
            "0.0.0.0:10050",
            "inside the RTP port range 10000-10100",
        ),
        (
            "echo.host",
            "0.0.0.0",
            "Asterisk must be able to send RTP to it",
        ),
        ("echo.allow", "10.0.0.1/8", "10.0.0.1/8 has host bits set; the network is 10.0.0.0/8"),
        ("echo.allow", "10.0.0.0/8,lan", "\"lan\" is not an IP address or CIDR"),
        ("echo.allow", "::/200", "prefix length /200 is too long"),
        ("echo.allow", ",", "the list is empty"),
        ("echo.rate_pps", "10000001", "10000001 is outside 0..=10000000"),
        ("echo.rate_pps", "-1", "must not be negative"),
        ("echo.rate_pps", "fast", "not a whole number of datagrams per second"),
        ("echo.burst", "0", "0 is outside 1..=10000000"),
        ("echo.max_bytes", "0", "0 is outside 1..=2048"),
        ("echo.max_bytes", "9000", "9000 is outside 1..=2048"),
        ("http.addr", "abc", "not an IP:port socket address"),
        ("http.token_file", "/nonexistent/api-token", "cannot read it"),
        ("shutdown_timeout_ms", "600001", "outside 0..=600000"),
        ("ari.request_timeout_ms", "0", "outside 1..=600000"),
        ("ari.request_timeout_ms", "5s", "not a whole number"),
        ("supervision.max_restarts", "0", "0 is outside 1..=1000"),
        ("supervision.max_restarts", "1001", "1001 is outside 1..=1000"),
        ("supervision.max_restarts", "4294967296", "outside 1..=1000"),
        ("supervision.max_restarts", "-1", "must not be negative"),
        ("supervision.max_restarts", "five", "not a whole number"),
        ("supervision.window_ms", "99", "99 ms is outside 100..=600000"),
        ("supervision.window_ms", "600001", "outside 100..=600000"),
        ("supervision.window_ms", "10s", "not a whole number"),
        ("faults.enabled", "maybe", "not a boolean"),
        ("faults.enabled", "2", "not a boolean"),
        ("faults.enabled", "on", "not a boolean"),
    ];

    fn assert_one_line(message: &str) {
        assert!(!message.contains('\n'), "not one line: {message}");
    }

    #[test]
    fn invalid_env_values_name_the_variable_and_value() {
        for &(key, bad, reason) in INVALID {
            let var = setting(key).env;
            let error = Config::load(&Cli::default(), &env_of(&[(var, bad)])).unwrap_err();
            let message = error.to_string();
            assert_eq!(
                message,
                format!("invalid {var}={bad:?}: {}", reason_of(&error))
            );
            assert!(message.contains(reason), "{message} lacks {reason:?}");
            assert_one_line(&message);
            assert!(
                matches!(error, ConfigError::Invalid { setting: ref name, .. } if name == setting(key).key)
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
            let flag = setting(key).flag();
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
            let writable = match setting(key).kind {
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
            let line = if key.contains('.') { 2 } else { 1 };
            let expected = format!("invalid {} in /etc/rtpvisor.toml at line {line}: ", setting(key).key);
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
            "invalid media.rtp_ports in /etc/rtpvisor.toml at line 2: start 2 is above end 1"
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
                message.starts_with(&format!("invalid {key} in f.toml at line ")),
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
        for spec in SETTINGS {
            {
                let var = spec.env;
                let message = Config::load(&Cli::default(), &env_of(&[(var, " ")]))
                    .unwrap_err()
                    .to_string();
                assert!(message.starts_with(&format!("invalid {var}=")), "{message}");
                assert!(message.contains("empty"), "{message}");
            }
            {
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
                    message.contains(&format!("{} in f.toml at line ", spec.key)) && message.contains(": empty; remove the key"),
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
        assert!(message.starts_with("invalid faults.enabled in f.toml at line 2: the /faults routes need"), "{message}");
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
            let message = Config::load(&cli_with("http.token", bad), &no_env).unwrap_err().to_string();
            assert!(message.starts_with("invalid --http-token (hidden): "), "{message}");
            let file = sample_file(&format!("bad-token-{}", bad.len()), &format!("{bad}\n"));
            let message = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_HTTP_TOKEN_FILE", file)]))
                .unwrap_err()
                .to_string();
            assert!(message.contains("the file's content must") && message.contains(reason), "{message}");
            assert!(!message.contains(bad), "{message}");
            let message = Config::from_toml_str(&toml_line("http.token", bad), "f.toml").unwrap_err().to_string();
            assert!(message.starts_with("invalid http.token in f.toml at line 2: ") && !message.contains(bad), "{message}");
        }
        let message = Config::from_toml_str("[http]\ntoken = 1234567890123456789", "f.toml").unwrap_err().to_string();
        assert_eq!(message, "invalid http.token in f.toml at line 2: expected a string, got integer");
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
        let cli = cli_with("http.token_file", token);
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
            let message = Config::load(&cli_with("ari.url", url), &no_env).unwrap_err().to_string();
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
        let cli = cli_with("ari.password", DEV_PASSWORD);
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
        fn names_a_file(key: &str) -> bool {
            matches!(key, "ari.password_file" | "http.token_file" | "ari.ca_file")
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any text for any setting: a value or a one-line reason, never a panic, whether
            /// parsed alone or loaded from the environment, a flag or a file.
            #[test]
            fn any_text_never_panics(index in 0..SETTINGS.len(), raw in text()) {
                let spec = &SETTINGS[index];
                let mut config = Config::default();
                if let Err(reason) = config.set(spec.key, &raw) {
                    prop_assert!(!reason.contains('\n'), "{reason}");
                }
                if !names_a_file(spec.key) {
                    {
                        let var = spec.env;
                        if let Err(e) = Config::load(&Cli::default(), &env_of(&[(var, raw.as_str())])) {
                            let message = e.to_string();
                            prop_assert!(!message.contains('\n'), "{message}");
                        }
                    }
                    let _ = Config::from_toml_str(&toml_line(spec.key, &raw), "f.toml");
                    if !raw.starts_with('-') {
                        let flag = spec.flag();
                        if let Ok(cli) = Cli::try_parse_from(["rtpvisor", &format!("{flag}={raw}")]) {
                            let _ = Config::load(&cli, &no_env);
                        }
                    }
                }
            }

            /// A value a setting accepts reads back the same from its text form.
            #[test]
            fn valid_values_round_trip_through_value_text(index in 0..SETTINGS.len(), raw in text()) {
                let key = SETTINGS[index].key;
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
            ("[media]\nrtp_port = \"1-2\"", "unknown key media.rtp_port in f.toml at line 2; known keys here: host, bind_ip, rtp_ports"),
            ("colour = 1", "unknown key colour in f.toml at line 1; known keys here: ari, media, echo, http, supervision, faults, shutdown_timeout_ms"),
            ("[supervision]\nmax_restart = 3", "unknown key supervision.max_restart in f.toml at line 2; known keys here: max_restarts, window_ms"),
            ("[faults]\nenable = true", "unknown key faults.enable in f.toml at line 2; known keys here: enabled"),
            ("[metrics]\nport = 1", "unknown key metrics in f.toml at line 1"),
            ("[echo.extra]\nx = 1", "unknown key echo.extra in f.toml at line 1; known keys here: addr, host"),
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
                 (set by media.rtp_ports in {} at line 2)",
                file.path()
            )
        );
        let message = Config::from_toml_str("[ari]\nreconnect_min_ms = 6000", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with(
                "invalid ari.reconnect_min_ms in f.toml at line 2: 6000 is above the maximum 5000"
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
        let sample_cli: Vec<String> = SETTINGS
            .iter()
            .filter(|spec| !matches!(spec.key, "ari.password_file" | "http.token_file"))
            .map(|spec| format!("{}={}", spec.flag(), samples(spec.key)[2]))
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
        for spec in SETTINGS {
            let help =
                flag_help(&spec.flag()).unwrap_or_else(|| panic!("{} missing", spec.key));
            let default = match spec.key {
                "ari.password" => DEV_PASSWORD.to_owned(),
                key => defaults.value_text(key),
            };
            assert!(help.contains(&format!("[default: {default}]")), "{help}");
            assert!(
                help.contains(&format!("[env: {}]", spec.env)),
                "{help}"
            );
        }
        assert!(flag_help("--config")
            .unwrap()
            .contains("[env: RTPVISOR_CONFIG]"));
        // Every value flag is in SETTINGS, so none can bypass validation.
        for arg in Cli::command().get_arguments() {
            let long = format!("--{}", arg.get_long().unwrap());
            let known = SETTINGS.iter().any(|spec| spec.flag() == long);
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
        assert_eq!(cli.flag("media.late_ms"), Some("2.5"));
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
            "invalid supervision.max_restarts in f.toml at line 2: 0 is outside 1..=1000"
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
}
