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
            self.settings.app
        );
        self.http.ws(url).max_frame_size(4 * 1024 * 1024)
    }

    pub async fn asterisk_info(&self) -> Result<AsteriskInfo, AriError> {
        self.call_json(Method::GET, "/asterisk/info".into(), &[]).await
    }

    pub async fn application(&self) -> Result<Application, AriError> {
        let path = format!("/applications/{}", self.settings.app);
        self.call_json(Method::GET, path, &[]).await
    }

    pub async fn channels(&self) -> Result<Vec<Channel>, AriError> {
        self.call_json(Method::GET, "/channels".into(), &[]).await
    }

    pub async fn bridges(&self) -> Result<Vec<Bridge>, AriError> {
        self.call_json(Method::GET, "/bridges".into(), &[]).await
    }

    /// `POST /channels/externalMedia`: Asterisk creates a UnicastRTP channel that sends the
    /// bridge's media to `external_host` and expects ours on the address in its channelvars.
    pub async fn external_media(&self, params: &ExternalMediaParams) -> Result<Channel, AriError> {
        self.call_json(Method::POST, "/channels/externalMedia".into(), &params.query())
            .await
    }

    /// `POST /bridges` of type mixing with the given id.
    pub async fn create_bridge(&self, bridge_id: &str, name: &str) -> Result<Bridge, AriError> {
        let q = [
            ("type", "mixing".to_string()),
            ("bridgeId", bridge_id.to_string()),
            ("name", name.to_string()),
        ];
        self.call_json(Method::POST, "/bridges".into(), &q).await
    }

    pub async fn add_to_bridge(&self, bridge_id: &str, channels: &[&str]) -> Result<(), AriError> {
        let path = format!("/bridges/{bridge_id}/addChannel");
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
        let v: Value = self.call_json(Method::GET, format!("/channels/{channel_id}/variable"), &q).await?;
        Ok(v.value)
    }

    pub async fn answer(&self, channel_id: &str) -> Result<(), AriError> {
        self.call_empty(Method::POST, format!("/channels/{channel_id}/answer"), &[]).await
    }

    /// `DELETE /channels/{id}`. A channel that is already gone is success.
    pub async fn hangup(&self, channel_id: &str, reason: HangupReason) -> Result<(), AriError> {
        let q = [("reason", reason.as_str().to_string())];
        match self.call_empty(Method::DELETE, format!("/channels/{channel_id}"), &q).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// `DELETE /bridges/{id}`. A bridge that is already gone is success.
    pub async fn destroy_bridge(&self, bridge_id: &str) -> Result<(), AriError> {
        match self.call_empty(Method::DELETE, format!("/bridges/{bridge_id}"), &[]).await {
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
        self.call_json(Method::POST, "/channels".into(), &q).await
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        query: &[(&str, String)],
    ) -> Result<T, AriError> {
        let body = self.call(method.clone(), &path, query).await?;
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
        self.call(method, &path, query).await.map(|_| ())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<bytes::Bytes, AriError> {
        let idempotent = method == Method::GET || method == Method::DELETE;
        match self.call_once(method.clone(), path, query).await {
            Err(e @ AriError::Transport { .. }) if idempotent => {
                log::debug!("{e}: sending it once more");
                self.call_once(method, path, query).await
            }
            other => other,
        }
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<bytes::Bytes, AriError> {
        let name = method_name(&method);
        let transport = |reason: String| AriError::Transport { method: name, path: path.to_string(), reason };
        // Never closed, so acquiring cannot fail; held until the answer's body is read.
        let _turn = self.in_flight.acquire().await.map_err(|e| transport(e.to_string()))?;
        let url = format!("{}{}", self.settings.url, path);
        let req = self
            .http
            .request(method, url)
            .query(&query)
            .map_err(|e| transport(format!("bad query: {e}")))?;
        let mut resp = req.send().await.map_err(|e| transport(describe_send_error(&e)))?;
        let body = resp
            .body()
            .limit(8 * 1024 * 1024)
            .await
            .map_err(|e| transport(format!("reading body: {e}")))?;
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

    #[test]
    fn not_found_is_recognised() {
        let e = AriError::Status { method: "DELETE", path: "/x".into(), status: 404, body: String::new() };
        assert!(e.is_not_found());
        let t = AriError::Transport { method: "GET", path: "/x".into(), reason: "reset".into() };
        assert!(!t.is_not_found());
        assert_eq!(t.status(), None);
    }
}
