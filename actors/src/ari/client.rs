//! ARI REST client on awc: the few calls rtpvisor makes, each returning a typed result or an
//! [`AriError`] that names the request. It owns no state beyond the connection settings; the
//! events WebSocket is opened here too ([`AriClient::events_request`]) but read by the
//! `AriConnection` actor.
//!
//! `awc::Client` holds an `Rc`: an `AriClient` lives on one arbiter (the main one, where every
//! actor that calls ARI runs) and is cloned there, never sent across threads.
//!
//! Connections, so that no request is lost to the transport:
//! - At most [`MAX_IN_FLIGHT`] requests are in flight at once (clones share the limit); the
//!   others wait their turn. Ending 100 calls at once puts ~300 requests in flight: more than
//!   Asterisk's HTTP session limit (`sessionlimit`, 100 by default) accepts.
//! - An idle pooled connection is dropped after [`KEEP_ALIVE`], before Asterisk closes it on
//!   its side (`session_keep_alive`, 15 s by default, awc's own default too): reusing a
//!   connection Asterisk is closing gets no answer ("connector has been disconnected").
//! - GET and DELETE (idempotent) are sent once more after a transport error; a POST is not
//!   (it may have been executed). Seen in the benchmark before these: 10 of 100 teardowns
//!   at shutdown failed that way and left their channels in Asterisk.
//!
//! Ids go into paths through [`super::path`], one percent-encoded segment each: an id from an
//! event or a listing is another application's choice as much as ours.
//!
//! Answers are read whole, up to a bound that depends on what was asked: [`MAX_ANSWER_BYTES`]
//! for one resource, [`MAX_LISTING_BYTES`] for a listing (every channel, every bridge, our
//! application's ids). A longer answer fails with [`AriError::TooLarge`], which names the
//! bound; the request timeout covers reading the answer too, not only its headers.
//!
//! Credentials: the password lives in a [`SecretString`] and goes on the wire only inside the
//! `Authorization` header, which is built here once and marked sensitive, so that the `Debug`
//! of a request or header map (awc, actix-http and our own logs at any level) prints
//! `Sensitive` instead of it. It never goes into a URL (no `api_key=` query).
//! `https://` URLs use rustls with the trust of [`super::tls`].

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use awc::http::header::{HeaderValue, AUTHORIZATION};
use awc::http::{Method, StatusCode};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::path::{self, PathError};
use super::tls::{self, TlsError};

use super::model::{Application, AsteriskInfo, Bridge, Channel, ExternalMediaParams, HangupReason};

/// Where ARI is and who we are to it. `Debug` shows the password as `[REDACTED]`.
#[derive(Debug, Clone)]
pub struct AriSettings {
    /// Base URL including `/ari`, without a trailing slash, e.g. `http://127.0.0.1:8088/ari`.
    pub url: String,
    pub user: String,
    /// A secret type, not a `String`: no `Debug`, log line or error can show it by accident.
    pub password: SecretString,
    /// PEM file of the CA that signed Asterisk's certificate (`https://` only); `None`: Mozilla's
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// The Stasis application name our dialplan sends calls to.
    pub app: String,
    /// Bound on every REST request: a hung Asterisk must not hang a call's setup forever.
    pub request_timeout: Duration,
}

/// Why an ARI request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AriError {
    /// Asterisk answered with an error status.
    #[error("ARI {method} {path} answered {status}: {body}")]
    Status { method: &'static str, path: String, status: u16, body: String },
    /// No answer: connection refused or reset, or the request timed out.
    #[error("ARI {method} {path} failed: {reason}")]
    Transport { method: &'static str, path: String, reason: String },
    /// The answer was not what the ARI spec says.
    #[error("ARI {method} {path} answered something we could not decode: {reason}")]
    Decode { method: &'static str, path: String, reason: String },
    /// The answer is longer than we read of one (`limit` bytes): not read, not retried.
    #[error("ARI {method} {path} answered more than {} (the most rtpvisor reads of such an answer)", mib(*limit))]
    TooLarge { method: &'static str, path: String, limit: usize },
    /// An id that no path can name (`path` shows where it would have gone): nothing was sent.
    #[error("ARI {method} {path} not sent, id {id:?}: {source}")]
    BadId { method: &'static str, path: &'static str, id: String, source: PathError },
}

/// `8388608` -> `8 MiB`; a bound that is no whole number of MiB in bytes.
fn mib(bytes: usize) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

impl AriError {
    /// The HTTP status, when Asterisk answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AriError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the resource was already gone: a delete of it has nothing left to do.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// A cheap-to-clone ARI REST client (one awc connection pool per arbiter).
#[derive(Clone)]
pub struct AriClient {
    http: awc::Client,
    settings: AriSettings,
    in_flight: Rc<tokio::sync::Semaphore>,
}

/// Most ARI requests in flight at once (per client and its clones).
pub const MAX_IN_FLIGHT: usize = 64;
/// How long an idle pooled connection is kept (under Asterisk's 15 s `session_keep_alive`).
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Most bytes read of an answer about one resource (a channel, a bridge, Asterisk's info):
/// these are well under 4 KiB.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Most bytes read of a listing: `GET /channels`, `GET /bridges`, and our application's ids.
/// Asterisk 22 lists a channel in ~400 bytes (405 measured beside 19,576 Local channels with
/// caller IDs on half of them; BENCHMARKS.md), so 64 MiB holds ~165,000 such channels, or
/// ~65,000 at 1 KiB each (long caller IDs, several `channelvars`): more than one Asterisk
/// carries (each channel holds one or two of its file descriptors, a thread per call). What a
/// fetch costs: the answer (20,000 channels: 8 MB; awc's buffer grows by doubling) and the
/// decoded list (~790 bytes a channel: 16 MB); at the bound ~64 MiB plus ~130 MB. A
/// reconciliation reads one listing at a time.
pub const MAX_LISTING_BYTES: usize = 64 << 20;

/// `Authorization: Basic base64(user:password)` (RFC 7617), marked sensitive: `Debug` of the
/// value, and of any header map or request holding it, prints `Sensitive`.
pub fn basic_authorization(user: &str, password: &SecretString) -> HeaderValue {
    let pair = secrecy::SecretString::from(format!("{user}:{}", password.expose_secret()));
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair.expose_secret());
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .expect("base64 text is a valid header value");
    value.set_sensitive(true);
    value
}

impl AriClient {
    /// Fails only when `settings.ca_file` cannot be read or holds no usable certificate.
    pub fn new(settings: AriSettings) -> Result<Self, TlsError> {
        let tls = tls::client_config_for(settings.ca_file.as_deref())?;
        let connector = awc::Connector::new()
            .rustls_0_23(tls)
            .limit(MAX_IN_FLIGHT)
            .conn_keep_alive(KEEP_ALIVE);
        // A default header goes on every request, the WebSocket upgrade included.
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(settings.request_timeout)
            .add_default_header((AUTHORIZATION, basic_authorization(&settings.user, &settings.password)))
            .finish();
        Ok(AriClient { http, settings, in_flight: Rc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)) })
    }

    pub fn settings(&self) -> &AriSettings {
        &self.settings
    }

    pub fn app(&self) -> &str {
        &self.settings.app
    }

    /// Opens the events WebSocket for our application. `subscribeAll=false`: we get the events
    /// of channels and bridges in our app, nothing else.
    pub fn events_request(&self) -> awc::ws::WebsocketsRequest {
        let url = format!(
            "{}/events?app={}&subscribeAll=false",
            ws_url(&self.settings.url),
            path::query_value(&self.settings.app)
        );
        self.http.ws(url).max_frame_size(4 * 1024 * 1024)
    }

    pub async fn asterisk_info(&self) -> Result<AsteriskInfo, AriError> {
        self.call_json(Method::GET, "/asterisk/info".into(), &[], MAX_ANSWER_BYTES).await
    }

    /// `GET /applications/{app}`: our application with the ids of everything in it.
    pub async fn application(&self) -> Result<Application, AriError> {
        let path = format!("/applications/{}", segment(&Method::GET, "/applications/{app}", &self.settings.app)?);
        self.call_json(Method::GET, path, &[], MAX_LISTING_BYTES).await
    }

    /// `GET /channels`: every channel in Asterisk, everyone's.
    pub async fn channels(&self) -> Result<Vec<Channel>, AriError> {
        self.call_json(Method::GET, "/channels".into(), &[], MAX_LISTING_BYTES).await
    }

    /// `GET /bridges`: every bridge in Asterisk, everyone's.
    pub async fn bridges(&self) -> Result<Vec<Bridge>, AriError> {
        self.call_json(Method::GET, "/bridges".into(), &[], MAX_LISTING_BYTES).await
    }

    /// `POST /channels/externalMedia`: Asterisk creates a UnicastRTP channel that sends the
    /// bridge's media to `external_host` and expects ours on the address in its channelvars.
    pub async fn external_media(&self, params: &ExternalMediaParams) -> Result<Channel, AriError> {
        self.call_json(Method::POST, "/channels/externalMedia".into(), &params.query(), MAX_ANSWER_BYTES)
            .await
    }

    /// `POST /bridges` of type mixing with the given id.
    pub async fn create_bridge(&self, bridge_id: &str, name: &str) -> Result<Bridge, AriError> {
        let q = [
            ("type", "mixing".to_string()),
            ("bridgeId", bridge_id.to_string()),
            ("name", name.to_string()),
        ];
        self.call_json(Method::POST, "/bridges".into(), &q, MAX_ANSWER_BYTES).await
    }

    /// `POST /bridges/{id}/addChannel`. The channel ids go in the query, where awc encodes them.
    pub async fn add_to_bridge(&self, bridge_id: &str, channels: &[&str]) -> Result<(), AriError> {
        let path = format!("/bridges/{}/addChannel", segment(&Method::POST, "/bridges/{id}/addChannel", bridge_id)?);
        let q = [("channel", channels.join(","))];
        self.call_empty(Method::POST, path, &q).await
    }

    /// `GET /channels/{id}/variable?variable=NAME`: the variable's value (404 when the channel
    /// or the variable does not exist).
    pub async fn channel_variable(&self, channel_id: &str, name: &str) -> Result<String, AriError> {
        #[derive(serde::Deserialize)]
        struct Value {
            value: String,
        }
        let q = [("variable", name.to_string())];
        let path = format!("/channels/{}/variable", segment(&Method::GET, "/channels/{id}/variable", channel_id)?);
        let v: Value = self.call_json(Method::GET, path, &q, MAX_ANSWER_BYTES).await?;
        Ok(v.value)
    }

    pub async fn answer(&self, channel_id: &str) -> Result<(), AriError> {
        let path = format!("/channels/{}/answer", segment(&Method::POST, "/channels/{id}/answer", channel_id)?);
        self.call_empty(Method::POST, path, &[]).await
    }

    /// `DELETE /channels/{id}`. A channel that is already gone is success.
    pub async fn hangup(&self, channel_id: &str, reason: HangupReason) -> Result<(), AriError> {
        let path = format!("/channels/{}", segment(&Method::DELETE, "/channels/{id}", channel_id)?);
        let q = [("reason", reason.as_str().to_string())];
        match self.call_empty(Method::DELETE, path, &q).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// `DELETE /bridges/{id}`. A bridge that is already gone is success.
    pub async fn destroy_bridge(&self, bridge_id: &str) -> Result<(), AriError> {
        let path = format!("/bridges/{}", segment(&Method::DELETE, "/bridges/{id}", bridge_id)?);
        match self.call_empty(Method::DELETE, path, &[]).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// `POST /channels` (originate) into our app: used by tests and tools to place calls.
    /// `endpoint` e.g. `Local/echo@rtpvisor-test`; `app_args` the Stasis arguments.
    pub async fn originate(
        &self,
        endpoint: &str,
        app_args: &str,
        channel_id: Option<&str>,
    ) -> Result<Channel, AriError> {
        self.originate_ids(endpoint, app_args, channel_id, None).await
    }

    /// [`AriClient::originate`] naming both halves: `channel_id` enters the app, and for a
    /// `Local/` endpoint `other_channel_id` is the half that runs the dialplan.
    pub async fn originate_pair(
        &self,
        endpoint: &str,
        app_args: &str,
        channel_id: &str,
        other_channel_id: Option<&str>,
    ) -> Result<Channel, AriError> {
        self.originate_ids(endpoint, app_args, Some(channel_id), other_channel_id).await
    }

    async fn originate_ids(
        &self,
        endpoint: &str,
        app_args: &str,
        channel_id: Option<&str>,
        other_channel_id: Option<&str>,
    ) -> Result<Channel, AriError> {
        let mut q = vec![
            ("endpoint", endpoint.to_string()),
            ("app", self.settings.app.clone()),
            ("appArgs", app_args.to_string()),
            ("formats", "ulaw".to_string()),
        ];
        if let Some(id) = channel_id {
            q.push(("channelId", id.to_string()));
        }
        if let Some(other) = other_channel_id {
            q.push(("otherChannelId", other.to_string()));
        }
        self.call_json(Method::POST, "/channels".into(), &q, MAX_ANSWER_BYTES).await
    }

    /// A request whose answer is JSON of at most `limit` bytes.
    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        query: &[(&str, String)],
        limit: usize,
    ) -> Result<T, AriError> {
        let body = self.call(method.clone(), &path, query, limit).await?;
        serde_json::from_slice(&body).map_err(|e| AriError::Decode {
            method: method_name(&method),
            path,
            reason: e.to_string(),
        })
    }

    async fn call_empty(
        &self,
        method: Method,
        path: String,
        query: &[(&str, String)],
    ) -> Result<(), AriError> {
        self.call(method, &path, query, MAX_ANSWER_BYTES).await.map(|_| ())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        limit: usize,
    ) -> Result<bytes::Bytes, AriError> {
        let idempotent = method == Method::GET || method == Method::DELETE;
        match self.call_once(method.clone(), path, query, limit).await {
            Err(e @ AriError::Transport { .. }) if idempotent => {
                log::debug!("{e}: sending it once more");
                self.call_once(method, path, query, limit).await
            }
            other => other,
        }
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        limit: usize,
    ) -> Result<bytes::Bytes, AriError> {
        let name = method_name(&method);
        let transport = |reason: String| AriError::Transport { method: name, path: path.to_string(), reason };
        // Never closed, so acquiring cannot fail; held until the answer's body is read.
        let _turn = self.in_flight.acquire().await.map_err(|e| transport(e.to_string()))?;
        let url = format!("{}{}", self.settings.url, path);
        let mut req = self.http.request(method, url);
        if !query.is_empty() {
            req = req.query(&query).map_err(|e| transport(format!("bad query: {e}")))?;
        }
        // awc's timeout ends at the answer's headers; the rest of the bound covers its body,
        // so that an Asterisk that stalls mid-answer cannot hold this request (and its turn)
        // forever.
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        let resp = req.send().await.map_err(|e| transport(describe_send_error(&e)))?;
        let mut resp = resp.timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let body = resp.body().limit(limit).await.map_err(|e| match e {
            awc::error::PayloadError::Overflow => AriError::TooLarge { method: name, path: path.to_string(), limit },
            e => transport(format!("reading body: {e}")),
        })?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::NO_CONTENT {
            Ok(body)
        } else {
            Err(AriError::Status {
                method: name,
                path: path.to_string(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).trim().chars().take(300).collect(),
            })
        }
    }
}

/// `id` as one path segment (see [`super::path`]); `at` says where, for the error.
fn segment(method: &Method, at: &'static str, id: &str) -> Result<String, AriError> {
    path::segment(id).map_err(|source| AriError::BadId { method: method_name(method), path: at, id: id.to_string(), source })
}

/// A failed request's text; a TLS failure says which check failed ([`tls::explain`]).
pub fn describe_send_error(error: &awc::error::SendRequestError) -> String {
    use awc::error::{ConnectError, SendRequestError};
    if let SendRequestError::Connect(ConnectError::Io(io)) = error {
        if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            return format!("Failed to connect to host: {}", tls::explain(tls));
        }
    }
    error.to_string()
}

/// A failed events WebSocket connect's text: TLS failures as above, a refused upgrade with its
/// status (awc's own text leaves it out).
pub fn describe_ws_error(error: &awc::error::WsClientError) -> String {
    use awc::error::WsClientError;
    match error {
        WsClientError::SendRequest(e) => describe_send_error(e),
        WsClientError::InvalidResponseStatus(status) if *status == StatusCode::UNAUTHORIZED => {
            format!("ARI refused the WebSocket: {status} (check ari.user and ari.password)")
        }
        WsClientError::InvalidResponseStatus(status) => format!("ARI refused the WebSocket: {status}"),
        other => other.to_string(),
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        _ => "OTHER",
    }
}

/// `http://host/ari` -> `ws://host/ari` (and https -> wss).
fn ws_url(http_url: &str) -> String {
    if let Some(rest) = http_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = http_url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        http_url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_maps_schemes() {
        assert_eq!(ws_url("http://127.0.0.1:8088/ari"), "ws://127.0.0.1:8088/ari");
        assert_eq!(ws_url("https://pbx/ari"), "wss://pbx/ari");
    }

    fn settings(password: &str) -> AriSettings {
        AriSettings {
            url: "https://127.0.0.1:8089/ari".into(),
            user: "rtpvisor".into(),
            password: SecretString::from(password.to_owned()),
            ca_file: None,
            app: "a".into(),
            request_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_password_never_shows_in_debug() {
        let password = "Zq9-distinctive-pw";
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("rtpvisor:{password}"));
        let s = settings(password);
        let header = basic_authorization(&s.user, &s.password);
        assert_eq!(header.to_str().unwrap(), format!("Basic {encoded}"), "RFC 7617");
        assert!(header.is_sensitive());
        let mut map = awc::http::header::HeaderMap::new();
        map.insert(AUTHORIZATION, header);
        for shown in [format!("{s:?}"), format!("{s:#?}"), format!("{map:?}")] {
            assert!(!shown.contains(password) && !shown.contains(&encoded), "{shown}");
        }
    }

    #[actix_rt::test]
    async fn requests_carry_the_header_without_showing_it() {
        let password = "Zq9-distinctive-pw";
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("rtpvisor:{password}"));
        let client = AriClient::new(settings(password)).unwrap();
        let ws = client.events_request();
        let shown = format!("{ws:?}");
        assert!(shown.contains("authorization"), "the upgrade carries the header: {shown}");
        assert!(!shown.contains(password) && !shown.contains(&encoded), "{shown}");
        assert!(shown.contains("wss://127.0.0.1:8089/ari/events?app=a"), "{shown}");
        let rest = format!("{:?}", client.http.get("https://127.0.0.1:8089/ari/channels"));
        assert!(rest.contains("authorization"), "{rest}");
        assert!(!rest.contains(password) && !rest.contains(&encoded), "{rest}");
    }

    #[test]
    fn connect_errors_explain_tls_and_refusals() {
        use awc::error::{ConnectError, SendRequestError, WsClientError};
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let e = WsClientError::SendRequest(SendRequestError::Connect(ConnectError::Io(io)));
        let text = describe_ws_error(&e);
        assert!(text.starts_with("Failed to connect to host: TLS: Asterisk's certificate is not signed"), "{text}");
        let e = WsClientError::InvalidResponseStatus(StatusCode::UNAUTHORIZED);
        assert_eq!(
            describe_ws_error(&e),
            "ARI refused the WebSocket: 401 Unauthorized (check ari.user and ari.password)"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = SendRequestError::Connect(ConnectError::Io(refused));
        assert_eq!(describe_send_error(&e), e.to_string(), "other errors keep their text");
    }

    /// A stand-in for Asterisk's HTTP server on loopback: each connection (up to 4, within
    /// 10 s) gets `reply` as raw bytes and is then held open for `hold`; the head of every
    /// request arrives on the channel.
    fn fake_asterisk(reply: Vec<u8>, hold: Duration) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/ari", listener.local_addr().unwrap());
        let (heads, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(10);
            let mut served = 0;
            while served < 4 && std::time::Instant::now() < until {
                let Ok((mut sock, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                served += 1;
                let (reply, heads) = (reply.clone(), heads.clone());
                std::thread::spawn(move || {
                    sock.set_nonblocking(false).unwrap();
                    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 && sock.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                    let _ = sock.write_all(&reply);
                    std::thread::sleep(hold);
                });
            }
        });
        (url, rx)
    }

    fn client_of(url: String, request_timeout: Duration) -> AriClient {
        AriClient::new(AriSettings { url, app: "my app/1".into(), request_timeout, ..settings("pw") }).unwrap()
    }

    fn ok_json(body: &[u8]) -> Vec<u8> {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    }

    /// What Asterisk 22 lists for a Local channel with caller ID set, as it writes it (395 bytes).
    fn listed_channel(i: usize) -> String {
        format!(
            r#"{{"id":"bystander-{i:08}-5f0c2d4e-9a7b","name":"Local/silence@rtpvisor-test-{i:08x};1","state":"Down","protocol_id":"","caller":{{"name":"Bystander Caller Name","number":"+4930123456789"}},"connected":{{"name":"","number":""}},"accountcode":"","dialplan":{{"context":"rtpvisor-test","exten":"silence","priority":1,"app_name":"Stasis","app_data":"bystander"}},"creationtime":"2026-12-08T01:46:21.596+0000","language":"en"}}"#
        )
    }

    #[actix_rt::test]
    async fn a_listing_of_25000_channels_is_read_whole() {
        let n = 25_000;
        let body = format!("[{}]", (0..n).map(listed_channel).collect::<Vec<_>>().join(","));
        assert!(body.len() > 8 << 20, "more than the 8 MiB earlier versions read: {}", body.len());
        let (url, heads) = fake_asterisk(ok_json(body.as_bytes()), Duration::ZERO);
        let channels = client_of(url, Duration::from_secs(5)).channels().await.unwrap();
        assert_eq!(channels.len(), n);
        assert_eq!(channels[n - 1].id, format!("bystander-{:08}-5f0c2d4e-9a7b", n - 1));
        let head = heads.recv().unwrap();
        assert!(head.starts_with("GET /ari/channels HTTP/1.1\r\n"), "{head}");
    }

    #[actix_rt::test]
    async fn an_answer_over_its_bound_fails_naming_the_bound() {
        // A listing that says it is longer than MAX_LISTING_BYTES: refused before reading.
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n[", MAX_LISTING_BYTES + 1);
        let (url, _heads) = fake_asterisk(head.into_bytes(), Duration::from_millis(500));
        let e = client_of(url, Duration::from_secs(5)).bridges().await.unwrap_err();
        assert!(matches!(e, AriError::TooLarge { limit: MAX_LISTING_BYTES, .. }), "{e:?}");
        assert_eq!(e.to_string(), "ARI GET /bridges answered more than 64 MiB (the most rtpvisor reads of such an answer)");
        // One resource without a length, 2 MiB in 32 chunks of 64 KiB: cut at 1 MiB.
        let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..32 {
            reply.extend_from_slice(b"10000\r\n");
            reply.resize(reply.len() + 0x10000, b' ');
            reply.extend_from_slice(b"\r\n");
        }
        reply.extend_from_slice(b"0\r\n\r\n");
        let (url, _heads) = fake_asterisk(reply, Duration::ZERO);
        let e = client_of(url, Duration::from_secs(5)).asterisk_info().await.unwrap_err();
        assert_eq!(e.to_string(), "ARI GET /asterisk/info answered more than 1 MiB (the most rtpvisor reads of such an answer)");
    }

    #[actix_rt::test]
    async fn an_answer_that_stalls_midway_ends_at_the_request_timeout() {
        let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n[".to_vec();
        reply.extend_from_slice(listed_channel(0).as_bytes());
        let (url, heads) = fake_asterisk(reply, Duration::from_secs(8));
        let client = client_of(url, Duration::from_millis(300));
        let outcome = tokio::time::timeout(Duration::from_secs(6), client.channels()).await;
        let e = outcome.expect("the request timeout covers the body").unwrap_err();
        assert!(matches!(e, AriError::Transport { .. }), "{e:?}");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert_eq!(heads.try_iter().count(), 2, "a GET is sent once more after a transport error");
    }

    #[actix_rt::test]
    async fn ids_go_into_paths_as_one_encoded_segment() {
        let (url, heads) = fake_asterisk(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), Duration::ZERO);
        let client = client_of(url, Duration::from_secs(5));
        client.answer("a/b c+d?e#f%").await.unwrap();
        assert!(heads.recv().unwrap().starts_with("POST /ari/channels/a%2Fb%20c%2Bd%3Fe%23f%25/answer HTTP/1.1\r\n"));
        let (url, heads) = fake_asterisk(ok_json(br#"{"name":"my app/1"}"#), Duration::ZERO);
        client_of(url, Duration::from_secs(5)).application().await.unwrap();
        assert!(heads.recv().unwrap().starts_with("GET /ari/applications/my%20app%2F1 HTTP/1.1\r\n"));
        let (url, heads) = fake_asterisk(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), Duration::ZERO);
        client_of(url, Duration::from_secs(5)).destroy_bridge("..").await.unwrap();
        assert!(heads.recv().unwrap().starts_with("DELETE /ari/bridges/%2E%2E HTTP/1.1\r\n"));
        let ws = format!("{:?}", client.events_request());
        assert!(ws.contains("/events?app=my%20app%2F1&subscribeAll=false"), "{ws}");
    }

    #[actix_rt::test]
    async fn an_empty_id_is_never_sent() {
        let (url, heads) = fake_asterisk(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), Duration::ZERO);
        let client = client_of(url, Duration::from_secs(5));
        let e = client.add_to_bridge("", &["c"]).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "ARI POST /bridges/{id}/addChannel not sent, id \"\": an empty id names nothing (the path would address the level above)"
        );
        assert!(client.hangup("", HangupReason::Normal).await.is_err(), "not taken for 'already gone'");
        assert!(client.destroy_bridge("").await.is_err());
        assert!(client.answer("").await.is_err());
        assert!(heads.recv_timeout(Duration::from_millis(200)).is_err(), "nothing reached the server");
    }

    #[test]
    fn not_found_is_recognised() {
        let e = AriError::Status { method: "DELETE", path: "/x".into(), status: 404, body: String::new() };
        assert!(e.is_not_found());
        let t = AriError::Transport { method: "GET", path: "/x".into(), reason: "reset".into() };
        assert!(!t.is_not_found());
        assert_eq!(t.status(), None);
    }
}
