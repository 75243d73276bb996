//! The parsers of setting values: each takes the text a source gave and returns the value or
//! the reason it is refused, alone (the caller names the setting and the source); and the URL
//! helpers the checks between settings use. Pure.

use std::net::{IpAddr, SocketAddr};

use rtpvisor_actors::mode::CallMode;

use super::{MAX_LATE_MS, MIN_TOKEN_LEN};

pub(super) fn parse_ip(raw: &str) -> Result<IpAddr, String> {
    raw.trim().parse().map_err(|_| "not an IP address".to_owned())
}

pub(super) fn parse_mode(raw: &str) -> Result<CallMode, String> {
    raw.parse().map_err(|_| {
        let names: Vec<&str> = CallMode::ALL.iter().map(|mode| mode.as_str()).collect();
        format!("must be one of {}", names.join(", "))
    })
}

pub(super) fn parse_echo_addr(raw: &str) -> Result<SocketAddr, String> {
    let addr = parse_socket_addr(raw)?;
    // Port 0 would bind a random port, while Asterisk is told the configured one.
    if addr.port() == 0 {
        return Err("port 0 is not allowed: Asterisk is sent to this port".into());
    }
    Ok(addr)
}

pub(super) fn parse_url(raw: &str) -> Result<String, String> {
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
pub(super) fn authority(rest: &str) -> &str {
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// `raw` with any `userinfo@` of its authority replaced by `***@`, for error messages.
pub(super) fn hide_url_credentials(raw: &str) -> String {
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
pub(super) fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let auth = authority(rest);
    if let Some(v6) = auth.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    auth.rsplit_once(':').map_or(auth, |(host, _)| host)
}

/// Loopback: `localhost` or an address in 127.0.0.0/8 or ::1.
pub(super) fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn parse_password(raw: &str) -> Result<String, String> {
    // It goes into a header (base64 keeps any byte safe), but a line break is a paste accident.
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(raw.to_owned())
}

/// RFC 6750 sends the token in a header: visible ASCII, no spaces; long enough not to guess.
pub(super) fn parse_token(raw: &str) -> Result<String, String> {
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

pub(super) fn parse_path(raw: &str) -> Result<String, String> {
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(raw.to_owned())
}

pub(super) fn parse_user(raw: &str) -> Result<String, String> {
    // HTTP basic auth joins user and password with ':' (RFC 7617), so the user cannot hold one.
    if raw.contains(':') {
        return Err("must not contain ':' (HTTP basic auth separator)".into());
    }
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(raw.to_owned())
}

pub(super) fn parse_app(raw: &str) -> Result<String, String> {
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

pub(super) fn parse_host(raw: &str) -> Result<String, String> {
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

pub(super) fn parse_ms(raw: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, String> {
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

/// A whole number of `unit` within `range` (which fits u32).
pub(super) fn parse_count(raw: &str, range: std::ops::RangeInclusive<u64>, unit: &str) -> Result<u32, String> {
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

pub(super) fn parse_max_calls(raw: &str) -> Result<u32, String> {
    let n: u32 = raw.trim().parse().map_err(|_| "not a whole number of calls".to_owned())?;
    if n > 65_536 {
        return Err(format!("{n} is above 65536"));
    }
    Ok(n)
}

pub(super) fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("not a boolean; expected true, false, 1, 0, yes or no".into()),
    }
}

pub(super) fn parse_late_ms(raw: &str) -> Result<f64, String> {
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

pub(super) fn parse_socket_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.trim()
        .parse()
        .map_err(|_| "not an IP:port socket address (IPv6 as [::1]:9090)".to_owned())
}
