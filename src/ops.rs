//! What the operator commands (`rtpvisor loadgen`, `rtpvisor check`) share: the service's
//! settings read exactly as the service reads them, a client of the service's HTTP API with
//! its token, and the steps of a call placed into the service through Asterisk: originate,
//! hang up, read what the service recorded for it ([`EndedReader`]), see what is left in
//! Asterisk. Each command holds its calls its own way (loadgen many at a rate, check one).
//! IO only; the figures are computed in [`crate::loadgen_report`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rtpvisor_actors::ari::client::{AriClient, AriError};
use rtpvisor_actors::ari::model::HangupReason;
use rtpvisor_actors::sys::unix_ms;
use serde_json::Value;

use crate::config::{Cli, Config};

/// The service's configuration as `rtpvisor` itself would load it: defaults, then the TOML
/// file (`--config`, or `RTPVISOR_CONFIG`), then the `RTPVISOR_*` environment.
pub fn load_config(file: Option<&str>) -> Result<Config, String> {
    let mut argv = vec!["rtpvisor".to_string()];
    if let Some(f) = file {
        argv.push("--config".into());
        argv.push(f.into());
    }
    let cli = <Cli as clap::Parser>::try_parse_from(argv).map_err(|e| e.to_string())?;
    Config::load(&cli, &|k| std::env::var(k).ok()).map_err(|e| e.to_string())
}

/// The ARI client the service would use (same URL, credentials, TLS trust, app, timeout).
pub fn ari_client(cfg: &Config) -> anyhow::Result<AriClient> {
    let settings = crate::app::service_config(cfg)?.ari;
    Ok(AriClient::new(settings)?)
}

/// Where a client on this host reaches the HTTP API: a wildcard bind address is reached on
/// loopback.
pub fn api_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Eight hex digits from the std hasher's per-process random keys: names one run's calls.
pub fn run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{:08x}", h.finish() as u32)
}

/// A client of the service's HTTP API (`awc`: one per thread, like every awc client).
#[derive(Clone)]
pub struct ApiClient {
    http: awc::Client,
    base: String,
    /// `Bearer <token>`, when the service has one.
    authorization: Option<String>,
}

impl ApiClient {
    pub fn new(base: String, token: Option<&str>) -> Self {
        let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
        ApiClient { http, base, authorization: token.map(|t| format!("Bearer {t}")) }
    }

    /// From the service's settings: `http.addr` and `http.token`.
    pub fn for_service(cfg: &Config) -> Self {
        ApiClient::new(api_url(cfg.http.addr), cfg.http.token.as_ref().map(|t| t.expose()))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`: the status and the JSON answer (null when it is not JSON).
    pub async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(a) = &self.authorization {
            req = req.insert_header(("Authorization", a.as_str()));
        }
        let mut resp = req.send().await.map_err(|e| format!("GET {}{path}: {e}", self.base))?;
        let body = resp.body().limit(16 * 1024 * 1024).await.map_err(|e| format!("GET {path}: reading the answer: {e}"))?;
        Ok((resp.status().as_u16(), serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// `GET path`, which must answer 200.
    pub async fn get_ok(&self, path: &str) -> Result<Value, String> {
        match self.get(path).await? {
            (200, v) => Ok(v),
            (401, _) => Err(format!("{}{path} answered 401: the API token (http.token) does not match the service's", self.base)),
            (code, v) => Err(format!("{}{path} answered {code}: {v}", self.base)),
        }
    }
}

/// Reads the service's store of ended calls (`GET /calls/ended`) from a cursor on.
pub struct EndedReader {
    pub next: u64,
    /// Entries that left the store before they were read (the store is bounded).
    pub missed: u64,
}

impl EndedReader {
    /// Starts after everything the service has recorded so far.
    pub async fn from_now(api: &ApiClient) -> Result<Self, String> {
        let page = api.get_ok("/calls/ended?since=0&limit=1").await?;
        Ok(EndedReader { next: page["newest"].as_u64().unwrap_or(0), missed: 0 })
    }

    /// Every entry recorded since the last read, oldest first (pages through at most 100
    /// pages of 1,000 per read).
    pub async fn read(&mut self, api: &ApiClient) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for _ in 0..100 {
            let page = api.get_ok(&format!("/calls/ended?since={}", self.next)).await?;
            let oldest = page["oldest"].as_u64().unwrap_or(0);
            if oldest > self.next + 1 {
                self.missed += oldest - self.next - 1;
            }
            let calls = page["calls"].as_array().cloned().unwrap_or_default();
            self.next = page["next"].as_u64().unwrap_or(self.next);
            if calls.is_empty() {
                break;
            }
            out.extend(calls);
        }
        Ok(out)
    }
}

/// One call placed through Asterisk into the service's Stasis app.
#[derive(Debug, Clone)]
pub struct Placed {
    pub channel: String,
    /// Unix ms when the originate request was sent.
    pub sent_at_ms: u64,
    /// Why Asterisk did not take the originate, if it did not.
    pub error: Option<String>,
}

/// Originates `channel` to `endpoint` into the app with `mode` as its Stasis argument.
/// `far` names the dialplan half of a `Local/` channel (other technologies have none).
pub async fn originate(ari: &AriClient, endpoint: &str, mode: &str, channel: &str, far: &str) -> Placed {
    let local = endpoint.get(..6).is_some_and(|t| t.eq_ignore_ascii_case("local/"));
    let sent_at_ms = unix_ms();
    let error = ari.originate_pair(endpoint, mode, channel, local.then_some(far)).await.err().map(|e| e.to_string());
    Placed { channel: channel.to_string(), sent_at_ms, error }
}

/// Hangs up `channel` (already gone is fine).
pub async fn hang_up(ari: &AriClient, channel: &str) -> Result<(), AriError> {
    ari.hangup(channel, HangupReason::Normal).await
}

/// Channels and bridges Asterisk still lists whose id contains `marker` (a run's calls, their
/// far halves, and the service's externalMedia channels and bridges, named after the caller).
pub async fn left_in_asterisk(ari: &AriClient, marker: &str) -> Result<(usize, usize), AriError> {
    let channels = ari.channels().await?.iter().filter(|c| c.id.contains(marker)).count();
    let bridges = ari.bridges().await?.iter().filter(|b| b.id.contains(marker)).count();
    Ok((channels, bridges))
}

/// Polls [`left_in_asterisk`] until nothing is left or `limit` passes; the last count.
pub async fn wait_asterisk_clean(ari: &AriClient, marker: &str, limit: Duration) -> Result<(usize, usize), AriError> {
    let start = Instant::now();
    loop {
        let left = left_in_asterisk(ari, marker).await?;
        if left == (0, 0) || start.elapsed() >= limit {
            return Ok(left);
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_reached_on_loopback_for_a_wildcard_bind() {
        assert_eq!(api_url("0.0.0.0:9090".parse().unwrap()), "http://127.0.0.1:9090");
        assert_eq!(api_url("[::]:9090".parse().unwrap()), "http://[::1]:9090");
        assert_eq!(api_url("10.1.2.3:80".parse().unwrap()), "http://10.1.2.3:80");
    }

    #[test]
    fn run_ids_are_eight_hex_digits() {
        let id = run_id();
        assert_eq!(id.len(), 8);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
