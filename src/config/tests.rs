//! The configuration's behaviour, source by source: every setting read from the file, the
//! environment and a flag, the precedence, the messages, the secrets, `--help`, `--print-config`.

use super::*;
use clap::{CommandFactory, Parser};

/// The help text of a flag.
fn flag_help(flag: &str) -> Option<String> {
    Cli::command()
        .get_arguments()
        .find(|arg| arg.get_long() == flag.strip_prefix("--"))
        .and_then(|arg| arg.get_help().map(ToString::to_string))
}

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

/// A CA certificate in PEM (a self-signed test CA; the TLS tests of the actors crate use it too).
const CA_PEM: &str = include_str!("../../actors/testdata/test-ca.pem");

/// A valid API token for tests that need one (fault injection).
const TOKEN: &str = "test-token-0123456789abcdef";

/// Settings a sample of `key` needs beside it to be valid: fault injection and an API beyond
/// loopback need a token.
fn companion_env(key: &str) -> Vec<(&'static str, &'static str)> {
    match key {
        "faults.enabled" | "http.addr" => vec![("RTPVISOR_HTTP_TOKEN", TOKEN)],
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
        "echo.workers" => ["1", "3", "1024"],
        "http.addr" => ["127.0.0.1:0", "[::]:9091", "0.0.0.0:80"],
        "http.token" => ["file-token-0123456789", "env-token-0123456789", "cli-token-0123456789"],
        "http.token_file" => [
            sample_file("token1", "file-token-1-0123456789\n"),
            sample_file("token2", "file-token-2-0123456789"),
            sample_file("token3", "file-token-3-0123456789\n"),
        ],
        "http.allow_open" => ["true", "false", "true"],
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
    assert_eq!(config.http.addr.to_string(), "127.0.0.1:9090");
    assert!(!config.http.allow_open);
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
        ("echo.workers", "RTPVISOR_ECHO_WORKERS", "--echo-workers"),
        ("http.addr", "RTPVISOR_HTTP_ADDR", "--http-addr"),
        ("http.token", "RTPVISOR_HTTP_TOKEN", "--http-token"),
        ("http.token_file", "RTPVISOR_HTTP_TOKEN_FILE", "--http-token-file"),
        ("http.allow_open", "RTPVISOR_HTTP_ALLOW_OPEN", "--http-allow-open"),
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
    ("echo.workers", "0", "0 is outside 1..=1024"),
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
fn an_api_beyond_loopback_needs_a_token_unless_allowed_open() {
    let open = [("RTPVISOR_HTTP_ADDR", "0.0.0.0:9090")];
    let message = Config::load(&Cli::default(), &env_of(&open)).unwrap_err().to_string();
    assert_eq!(
        message,
        "invalid RTPVISOR_HTTP_ADDR=\"0.0.0.0:9090\": the HTTP API would answer other hosts \
         without a token, and it shows every live call: make a token with `openssl rand -hex 32 > \
         FILE` and name FILE in http.token_file (RTPVISOR_HTTP_TOKEN_FILE), or set it in \
         http.token (RTPVISOR_HTTP_TOKEN); or bind http.addr to 127.0.0.1; or set \
         http.allow_open (RTPVISOR_HTTP_ALLOW_OPEN) to leave it open on purpose"
    );
    assert_one_line(&message);
    // Every source is named, every non-loopback address refused.
    let message = Config::from_toml_str("[http]\naddr = \"[::]:9090\"\n", "f.toml").unwrap_err().to_string();
    assert!(message.starts_with("invalid http.addr in f.toml at line 2: the HTTP API would answer"), "{message}");
    let message = Config::load(&cli_with("http.addr", "10.0.0.7:80"), &no_env).unwrap_err().to_string();
    assert!(message.starts_with("invalid --http-addr \"10.0.0.7:80\": the HTTP API"), "{message}");
    for addr in ["192.168.1.1:9090", "[fe80::1]:9090", "[::ffff:10.0.0.1]:9090"] {
        assert!(Config::load(&Cli::default(), &env_of(&[("RTPVISOR_HTTP_ADDR", addr)])).is_err(), "{addr}");
    }
    // Loopback needs no token: the default, and any other loopback address.
    assert_eq!(Config::load(&Cli::default(), &no_env).unwrap().http.addr.to_string(), "127.0.0.1:9090");
    for addr in ["127.0.0.1:0", "127.8.0.1:80", "[::1]:9090", "[::ffff:127.0.0.1]:9090"] {
        let config = Config::load(&Cli::default(), &env_of(&[("RTPVISOR_HTTP_ADDR", addr)]));
        assert!(config.is_ok_and(|c| c.http.token.is_none()), "{addr}");
    }
    // A token, from the setting or its file, lets it listen anywhere.
    let config = Config::load(&Cli::default(), &env_of(&[open[0], ("RTPVISOR_HTTP_TOKEN", TOKEN)])).unwrap();
    assert!(config.http.token.is_some() && !config.http.open_beyond_loopback());
    let file = sample_file("open-api-token", "a-token-in-a-file-0123\n");
    assert!(Config::load(&Cli::default(), &env_of(&[open[0], ("RTPVISOR_HTTP_TOKEN_FILE", file)])).is_ok());
    // The explicit opt-in: open on purpose.
    let allowed = [open[0], ("RTPVISOR_HTTP_ALLOW_OPEN", "true")];
    let config = Config::load(&Cli::default(), &env_of(&allowed)).unwrap();
    assert!(config.http.allow_open && config.http.open_beyond_loopback());
    let config = Config::from_toml_str("[http]\naddr = \"0.0.0.0:9090\"\nallow_open = true\n", "f.toml").unwrap();
    assert!(config.http.open_beyond_loopback());
    let denied = [open[0], ("RTPVISOR_HTTP_ALLOW_OPEN", "false")];
    assert!(Config::load(&Cli::default(), &env_of(&denied)).is_err());
}

/// The `environment` of every service named `rtpvisor*` in a compose file, `${VAR:-default}`
/// and `${VAR:?message}` replaced from `vars` (a required one missing there is a panic). Just
/// enough YAML for our compose files: two-space indents, `KEY: value` lines.
fn compose_environments(text: &str, vars: &[(&str, &str)]) -> Vec<(String, Vec<(String, String)>)> {
    let interpolate = |value: &str| {
        let mut out = String::new();
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("a closed ${") + start;
            let expr = &rest[start + 2..end];
            let (name, fallback) = match (expr.split_once(":-"), expr.split_once(":?")) {
                (Some((name, default)), _) => (name, Some(default)),
                (None, Some((name, _))) => (name, None),
                (None, None) => (expr, Some("")),
            };
            let given = vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            out.push_str(given.or(fallback).unwrap_or_else(|| panic!("{name} is required by {value}")));
            rest = &rest[end + 1..];
        }
        out + rest
    };
    let mut services: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let (mut in_services, mut in_environment) = (false, false);
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let content = line.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        match indent {
            0 => in_services = content == "services:",
            2 if in_services => {
                services.push((content.trim_end_matches(':').to_owned(), Vec::new()));
                in_environment = false;
            }
            4 => in_environment = content == "environment:",
            6 if in_services && in_environment => {
                let (key, value) = content.split_once(':').expect("KEY: value");
                let value = value.trim().trim_matches('"');
                services.last_mut().unwrap().1.push((key.to_owned(), interpolate(value)));
            }
            _ => {}
        }
    }
    services.retain(|(name, _)| name.starts_with("rtpvisor"));
    services
}

/// The compose stacks bind the API to 0.0.0.0 in their containers: their rtpvisors start
/// because they set a token, and would be refused without it.
#[test]
fn the_compose_stacks_set_a_token_where_the_api_leaves_loopback() {
    let vars = [("HTTP_TOKEN", "0123456789abcdef0123456789abcdef")];
    for (file, expected) in [("docker-compose.yml", 1), ("docker-compose.cluster.yml", 2)] {
        let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let services = compose_environments(&text, &vars);
        assert_eq!(services.len(), expected, "{file}: {services:?}");
        for (service, env) in services {
            let lookup = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
            let config = Config::load(&Cli::default(), &lookup).unwrap_or_else(|e| panic!("{file} {service}: {e}"));
            assert!(!config.http.addr.ip().is_loopback(), "{file} {service}: published, so beyond loopback");
            assert!(config.http.token.is_some() && !config.http.allow_open, "{file} {service}");
            let tokenless = |key: &str| if key.starts_with("RTPVISOR_HTTP_TOKEN") { None } else { lookup(key) };
            let message = Config::load(&Cli::default(), &tokenless).unwrap_err().to_string();
            assert!(message.contains("the HTTP API would answer other hosts without a token"), "{file} {service}: {message}");
        }
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
