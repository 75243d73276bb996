//! The HTTP API (actix-web): metrics (JSON and Prometheus), live calls, the port pool, the
//! supervision tree, health and readiness. Handlers talk to the typed [`Service`] handle only.
//!
//! Authentication is decided here once, for a whole scope: with a token configured
//! ([`ApiAuth::bearer`]) every route but `/health` and `/ready` sits behind a middleware that
//! wants `Authorization: Bearer <token>` (compared in constant time) and answers 401 with
//! `WWW-Authenticate: Bearer realm="rtpvisor"` otherwise. The probes stay open so that an
//! orchestrator's health check needs no secret. The token is never logged.
//!
//! The dashboard (`GET /`, one HTML page compiled into the binary) is behind the same token. A
//! browser cannot send a header when the page is first opened, so `GET /` alone also accepts
//! the token as `?token=<token>`; the page then removes it from the address bar, keeps it in
//! the tab's `sessionStorage`, and sends `Authorization: Bearer` on every fetch of its data. No
//! other route takes the token from the query string (it would end up in proxies' logs).

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{from_fn, Next};
use actix_web::{http::StatusCode, web, HttpResponse, ResponseError};
use rtpvisor_actors::actors::service::ChannelView;
use rtpvisor_actors::actors::Service;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::prometheus;

/// Why an API request failed; mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the service is not answering: {0}")]
    Unavailable(#[from] actix::MailboxError),
    #[error("no live channel {0}")]
    NotFound(String),
    #[error("fault injection is disabled (faults.enabled / RTPVISOR_FAULT_INJECTION)")]
    FaultsDisabled,
    #[error("{0}")]
    Internal(String),
    #[error("this route needs an API token: Authorization: Bearer <http.token>")]
    Unauthorized,
}

/// The challenge of a 401 (RFC 6750 section 3).
pub const CHALLENGE: &str = "Bearer realm=\"rtpvisor\"";

/// Who may use the protected routes: holders of the token, or anyone when none is configured.
#[derive(Clone)]
pub struct ApiAuth {
    /// `None`: the API is open: on loopback, or beyond it only with `http.allow_open` (the
    /// configuration refuses it otherwise, and the start logs a warning).
    token: Option<Arc<SecretString>>,
}

impl ApiAuth {
    /// No token: every route is open.
    pub fn open() -> Self {
        ApiAuth { token: None }
    }

    /// Every route but `/health` and `/ready` needs `token`.
    pub fn bearer(token: SecretString) -> Self {
        ApiAuth { token: Some(Arc::new(token)) }
    }

    /// Whether a request with this `Authorization` header may pass.
    pub fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        match &self.token {
            None => true,
            Some(token) => {
                authorization.is_some_and(|value| bearer_matches(token.expose_secret(), value.as_bytes()))
            }
        }
    }
}

impl ApiAuth {
    /// Whether the query string of a `GET /` carries the token as `token=`.
    pub fn allows_query(&self, query: &str) -> bool {
        match &self.token {
            None => true,
            Some(token) => web::Query::<Vec<(String, String)>>::from_query(query).is_ok_and(|q| {
                q.iter().any(|(k, v)| k == "token" && bool::from(v.as_bytes().ct_eq(token.expose_secret().as_bytes())))
            }),
        }
    }
}

/// The dashboard page, served as is.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// `Authorization: Bearer <token>`: the scheme is case-insensitive (RFC 7235 section 2.1), the
/// token compared in constant time (its length may show; its content does not).
fn bearer_matches(expected: &str, header: &[u8]) -> bool {
    const SCHEME: &[u8] = b"bearer ";
    if header.len() <= SCHEME.len() || !header[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return false;
    }
    let given = header[SCHEME.len()..].trim_ascii();
    bool::from(given.ct_eq(expected.as_bytes()))
}

/// The middleware of the protected scope.
async fn require_token(
    auth: ApiAuth,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let page_with_token = req.path() == "/" && req.method() == actix_web::http::Method::GET && auth.allows_query(req.query_string());
    if page_with_token || auth.allows(req.headers().get(header::AUTHORIZATION)) {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    Ok(req.error_response(ApiError::Unauthorized).map_into_right_body())
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) | ApiError::FaultsDisabled => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized = self {
            response.insert_header((header::WWW_AUTHENTICATE, CHALLENGE));
        }
        response.json(serde_json::json!({ "error": self.to_string() }))
    }
}

/// Registers every route; the caller provides `web::Data<Service>`. `/health` and `/ready` are
/// open; everything else (unknown paths included) is in one scope guarded by `auth`. The
/// `/faults/...` routes answer 404 unless fault injection is enabled in the configuration.
pub fn configure(auth: ApiAuth) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.route("/health", web::get().to(health)).route("/ready", web::get().to(ready));
        let guarded = web::scope("")
            .wrap(from_fn(move |req, next| require_token(auth.clone(), req, next)))
            .route("/faults/channels/{id}/panic", web::post().to(fault_channel_panic))
            .route("/faults/supervisor/panic", web::post().to(fault_supervisor_panic))
            .route("/faults/media/stall", web::post().to(fault_media_stall))
            .route("/faults/media/panic", web::post().to(fault_media_panic))
            .route("/faults/echo/panic", web::post().to(fault_echo_panic))
            .route("/faults/echo/stall", web::post().to(fault_echo_stall))
            .route("/", web::get().to(dashboard))
            .route("/events", web::get().to(events))
            .route("/calls/ended", web::get().to(ended_calls))
            .route("/metrics/latency_histogram", web::get().to(latency_histogram))
            .route("/metrics", web::get().to(metrics))
            .route("/metrics/prometheus", web::get().to(metrics_prometheus))
            .route("/channels", web::get().to(channels))
            .route("/channels/{id}", web::get().to(channel))
            .route("/ports", web::get().to(ports))
            .route("/actors", web::get().to(actors));
        cfg.service(guarded);
    }
}

async fn fault_channel_panic(svc: web::Data<Service>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    if !svc.faults_enabled() {
        return Err(ApiError::FaultsDisabled);
    }
    let id = id.into_inner();
    if svc.inject_channel_panic(&id).await? {
        Ok(HttpResponse::Accepted().json(serde_json::json!({ "injected": "panic", "channel": id })))
    } else {
        Err(ApiError::NotFound(id))
    }
}

async fn fault_supervisor_panic(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    if !svc.faults_enabled() {
        return Err(ApiError::FaultsDisabled);
    }
    svc.inject_supervisor_panic();
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "injected": "panic", "actor": "supervisor" })))
}

/// Blocks the media engine's thread for 30 s: past `supervision.media_stall_ms` the watchdog
/// escalates.
async fn fault_media_stall(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    if !svc.faults_enabled() {
        return Err(ApiError::FaultsDisabled);
    }
    svc.inject_media_stall(std::time::Duration::from_secs(30)).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "injected": "stall", "actor": "media-engine" })))
}

async fn fault_media_panic(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    if !svc.faults_enabled() {
        return Err(ApiError::FaultsDisabled);
    }
    svc.inject_media_panic().map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "injected": "panic", "actor": "media-engine" })))
}

/// Every shared echo worker panics; the EchoActor restarts them in place.
async fn fault_echo_panic(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    if !svc.faults_enabled() {
        return Err(ApiError::FaultsDisabled);
    }
    svc.inject_echo_panic();
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "injected": "panic", "actor": "echo" })))
}

/// Every shared echo worker blocks for 30 s; the EchoActor replaces them as stalled.
async fn fault_echo_stall(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    if !svc.faults_enabled() {
        return Err(ApiError::FaultsDisabled);
    }
    svc.inject_echo_stall(std::time::Duration::from_secs(30));
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "injected": "stall", "actor": "echo" })))
}

/// The dashboard: never cached, and never sends its address (which may hold the token) as a
/// referrer.
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CONTENT_SECURITY_POLICY, "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:"))
        .body(DASHBOARD_HTML)
}

async fn events(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(svc.events().await?))
}

/// `?since=SEQ` (default 0) and `?limit=N` (default and cap 1000) of `GET /calls/ended`.
#[derive(Debug, serde::Deserialize)]
struct EndedQuery {
    #[serde(default)]
    since: u64,
    #[serde(default = "ended_page_max")]
    limit: usize,
}

fn ended_page_max() -> usize {
    rtpvisor_actors::ended::PAGE_MAX
}

async fn ended_calls(
    svc: web::Data<Service>,
    q: Result<web::Query<EndedQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    match q {
        Ok(q) => Ok(HttpResponse::Ok().json(svc.ended_calls(q.since, q.limit).await?)),
        Err(e) => Ok(HttpResponse::BadRequest().json(serde_json::json!({ "error": format!("since and limit must be numbers: {e}") }))),
    }
}

async fn latency_histogram(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(svc.latency_histogram().await?))
}

async fn metrics(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(svc.metrics().await?))
}

async fn metrics_prometheus(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    let body = prometheus_text(&svc).await?;
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(body))
}

/// The body of `GET /metrics/prometheus`. Costs the same with 10 or 1,000 live calls: no
/// per-call figures and no node per call in the supervision tree it reads.
pub async fn prometheus_text(svc: &Service) -> Result<String, actix::MailboxError> {
    let m = svc.metrics().await?;
    let ports = svc.ports().await?;
    let actors = svc.actors(false).await?;
    let mut body = prometheus::render(&m, &ports);
    body.push_str(&prometheus::render_actors(&actors));
    Ok(body)
}

/// `GET /channels` options.
#[derive(Debug, Default, serde::Deserialize)]
struct ChannelsQuery {
    /// At most this many calls, the worst first (lowest MOS; unmeasured ones last).
    limit: Option<usize>,
}

async fn channels(svc: web::Data<Service>, q: web::Query<ChannelsQuery>) -> Result<HttpResponse, ApiError> {
    let mut views = svc.channels().await?;
    if let Some(limit) = q.limit {
        worst_first(&mut views, limit);
    }
    Ok(HttpResponse::Ok().json(views))
}

/// Keeps the `limit` calls with the lowest MOS (unmeasured after measured ones, then oldest
/// first), in that order.
fn worst_first(views: &mut Vec<ChannelView>, limit: usize) {
    views.sort_by(|a, b| {
        let mos = |v: &ChannelView| v.quality.map_or(f64::INFINITY, |q| q.mos);
        mos(a).total_cmp(&mos(b)).then(a.call.call_no.cmp(&b.call.call_no))
    });
    views.truncate(limit);
}

/// `GET /actors` options.
#[derive(Debug, serde::Deserialize)]
struct ActorsQuery {
    /// `false`: leave out the one node per live call (the dashboard shows their count).
    #[serde(default = "yes")]
    channels: bool,
}

fn yes() -> bool {
    true
}

async fn channel(svc: web::Data<Service>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let found = svc.channels().await?.into_iter().find(|c| {
        c.call.channel_id == id || c.call.channel_name == id || c.call.call_no.to_string() == id
    });
    match found {
        Some(c) => Ok(HttpResponse::Ok().json(c)),
        None => Err(ApiError::NotFound(id)),
    }
}

async fn ports(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(svc.ports().await?))
}

async fn actors(svc: web::Data<Service>, q: web::Query<ActorsQuery>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(svc.actors(q.channels).await?))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn ready(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    let r = svc.ready().await?;
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok(HttpResponse::build(status).json(r))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use actix_web::body::MessageBody;
    use actix_web::dev::ServiceResponse;
    use actix_web::{http::header, test, App};
    use serde_json::Value;

    use super::*;
    use crate::config::Config;
    use crate::prometheus::tests::check_exposition;

    /// A real service whose ARI never answers (nothing listens on port 1), so it stays unready
    /// and keeps reconnecting; the echo socket takes a free port; the RTP range is only leased
    /// on calls, and there are none.
    async fn start_service() -> Service {
        let mut cfg = Config::default();
        cfg.ari.url = "http://127.0.0.1:1/ari".into();
        cfg.ari.request_timeout_ms = 1000;
        cfg.media.bind_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        cfg.media.rtp_ports = rtpvisor_actors::ports::PortRange { start: 10900, end: 10902 };
        cfg.echo.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let svc_cfg = crate::app::service_config(&cfg).expect("service config");
        Service::start(svc_cfg).await.expect("service starts")
    }

    async fn stop_service(service: &Service) {
        let report = service.shutdown(Duration::from_secs(1)).await.expect("supervisor answers");
        assert_eq!(report.calls_left, 0);
    }

    /// GETs `path` from an `init_service` app.
    macro_rules! get {
        ($app:expr, $path:expr) => {
            test::call_service(&$app, test::TestRequest::get().uri($path).to_request()).await
        };
    }

    /// The status and JSON body of a response, which must say it is JSON.
    async fn json_of<B: MessageBody>(resp: ServiceResponse<B>) -> (StatusCode, Value) {
        let status = resp.status();
        let path = resp.request().path().to_owned();
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        assert_eq!(
            content_type.as_ref().and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{path}"
        );
        let body = test::read_body(resp).await;
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (status, json)
    }

    /// GETs `path` and returns the status and JSON body.
    macro_rules! get_json {
        ($app:expr, $path:expr) => {
            json_of(get!($app, $path)).await
        };
    }

    macro_rules! app {
        ($service:expr) => {
            app!($service, ApiAuth::open())
        };
        ($service:expr, $auth:expr) => {
            test::init_service(App::new().app_data(web::Data::new($service.clone())).configure(configure($auth)))
                .await
        };
    }

    const TOKEN: &str = "an-api-token-0123456789";

    /// A request to `path` with `authorization` as its header (none when `None`).
    fn request(method: &str, path: &str, authorization: Option<&str>) -> test::TestRequest {
        let req = match method {
            "POST" => test::TestRequest::post(),
            _ => test::TestRequest::get(),
        };
        let req = req.uri(path);
        match authorization {
            Some(value) => req.insert_header((header::AUTHORIZATION, value)),
            None => req,
        }
    }

    #[actix_web::test]
    async fn bearer_header_forms() {
        assert!(bearer_matches(TOKEN, format!("Bearer {TOKEN}").as_bytes()));
        assert!(bearer_matches(TOKEN, format!("bearer {TOKEN}").as_bytes()), "scheme is case-insensitive");
        assert!(bearer_matches(TOKEN, format!("BEARER  {TOKEN} ").as_bytes()), "surrounding blanks");
        for wrong in [
            String::new(),
            "Bearer".into(),
            "Bearer ".into(),
            TOKEN.into(),
            format!("Basic {TOKEN}"),
            format!("Bearer {}", &TOKEN[1..]),
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", TOKEN.to_uppercase()),
            format!("Bearer{TOKEN}"),
        ] {
            assert!(!bearer_matches(TOKEN, wrong.as_bytes()), "{wrong:?}");
        }
        assert!(ApiAuth::open().allows(None));
        let auth = ApiAuth::bearer(SecretString::from(TOKEN.to_owned()));
        assert!(!auth.allows(None));
        assert!(auth.allows(Some(&HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap())));
    }

    #[actix_web::test]
    async fn with_a_token_only_health_and_ready_are_open() {
        let service = start_service().await;
        let app = app!(service, ApiAuth::bearer(SecretString::from(TOKEN.to_owned())));
        // The probes answer without a token.
        let resp = test::call_service(&app, request("GET", "/health", None).to_request()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = test::call_service(&app, request("GET", "/ready", None).to_request()).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "open, and not ready (no ARI)");

        let good = format!("Bearer {TOKEN}");
        let wrong = format!("Bearer {TOKEN}-not");
        let basic = format!("Basic {TOKEN}");
        let protected = [
            ("GET", "/metrics"),
            ("GET", "/metrics/prometheus"),
            ("GET", "/channels"),
            ("GET", "/channels/x"),
            ("GET", "/ports"),
            ("GET", "/actors"),
            ("GET", "/"),
            ("GET", "/events"),
            ("GET", "/metrics/latency_histogram"),
            ("POST", "/faults/supervisor/panic"),
            ("POST", "/faults/channels/x/panic"),
            ("POST", "/faults/media/stall"),
            ("POST", "/faults/media/panic"),
            ("POST", "/faults/echo/panic"),
            ("POST", "/faults/echo/stall"),
            ("GET", "/no-such-route"),
        ];
        for (method, path) in protected {
            for header in [None, Some(wrong.as_str()), Some(basic.as_str()), Some(TOKEN)] {
                let resp = test::call_service(&app, request(method, path, header).to_request()).await;
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path} with {header:?}");
                let challenge = resp.headers().get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned());
                assert_eq!(challenge.as_deref(), Some(CHALLENGE), "{method} {path}");
                let body = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
                assert!(!body.contains(TOKEN), "{body}");
            }
        }
        // With the token: the routes themselves answer (faults are disabled here: 404).
        for (method, path, status) in [
            ("GET", "/metrics", StatusCode::OK),
            ("GET", "/metrics/prometheus", StatusCode::OK),
            ("GET", "/channels", StatusCode::OK),
            ("GET", "/channels/x", StatusCode::NOT_FOUND),
            ("GET", "/ports", StatusCode::OK),
            ("GET", "/actors", StatusCode::OK),
            ("GET", "/", StatusCode::OK),
            ("GET", "/events", StatusCode::OK),
            ("GET", "/metrics/latency_histogram", StatusCode::OK),
            ("POST", "/faults/supervisor/panic", StatusCode::NOT_FOUND),
            ("GET", "/no-such-route", StatusCode::NOT_FOUND),
            ("GET", "/health", StatusCode::OK),
        ] {
            let resp = test::call_service(&app, request(method, path, Some(&good)).to_request()).await;
            assert_eq!(resp.status(), status, "{method} {path}");
        }
        stop_service(&service).await;
    }

    #[actix_web::test]
    async fn the_dashboard_alone_takes_the_token_in_its_query() {
        let service = start_service().await;
        let app = app!(service, ApiAuth::bearer(SecretString::from(TOKEN.to_owned())));
        let resp = test::call_service(&app, request("GET", &format!("/?token={TOKEN}"), None).to_request()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let headers = resp.headers().clone();
        assert!(headers.get(header::CONTENT_TYPE).unwrap().to_str().unwrap().starts_with("text/html"));
        assert_eq!(headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
        assert_eq!(headers.get(header::REFERRER_POLICY).unwrap(), "no-referrer");
        let body = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
        assert!(body.contains("id=\"active-calls\"") && !body.contains(TOKEN), "the page, without the token");
        for external in ["src=", "href=", "<link", "@import", "url("] {
            assert!(!body.contains(external), "no external assets: {external}");
        }
        for (method, path) in [
            ("GET", format!("/?token={TOKEN}x")),
            ("GET", "/?token=".to_string()),
            ("GET", format!("/?tok={TOKEN}")),
            ("POST", format!("/?token={TOKEN}")),
            ("GET", format!("/metrics?token={TOKEN}")),
            ("GET", format!("/events?token={TOKEN}")),
            ("GET", format!("/channels?token={TOKEN}")),
        ] {
            let resp = test::call_service(&app, request(method, &path, None).to_request()).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        }
        // Other parameters may come along.
        let resp = test::call_service(&app, request("GET", &format!("/?a=1&token={TOKEN}"), None).to_request()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        stop_service(&service).await;
    }

    #[actix_web::test]
    async fn worst_first_keeps_the_lowest_mos_then_the_unmeasured() {
        use rtpvisor_actors::actors::channel::CallState;
        use rtpvisor_actors::actors::supervisor::CallInfo;
        use rtpvisor_actors::mode::CallMode;
        use rtpvisor_actors::quality::Quality;
        let view = |call_no: u64, mos: Option<f64>| ChannelView {
            call: CallInfo {
                call_no,
                channel_id: format!("c{call_no}"),
                channel_name: String::new(),
                mode: CallMode::Probe,
                state: CallState::Active,
                port: None,
                asterisk_address: None,
                external_media_channel: String::new(),
                bridge: String::new(),
                age_ms: 0,
                adopted_at_ms: None,
            },
            media: None,
            shared_echo: None,
            quality: mos.map(|mos| Quality { r_factor: 0.0, mos }),
        };
        let order = |views: &[ChannelView]| views.iter().map(|v| v.call.call_no).collect::<Vec<_>>();
        let all = vec![view(1, Some(4.4)), view(2, None), view(3, Some(3.1)), view(4, Some(4.4)), view(5, None)];
        let mut v = all.clone();
        worst_first(&mut v, 10);
        assert_eq!(order(&v), [3, 1, 4, 2, 5]);
        let mut v = all.clone();
        worst_first(&mut v, 2);
        assert_eq!(order(&v), [3, 1]);
        let mut v = all;
        worst_first(&mut v, 0);
        assert!(v.is_empty());
    }

    #[actix_web::test]
    async fn ended_calls_start_empty_and_take_since() {
        let service = start_service().await;
        let app = app!(service);
        let (status, body) = get_json!(app, "/calls/ended");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"calls": [], "next": 0, "oldest": 0, "newest": 0}));
        let (status, body) = get_json!(app, "/calls/ended?since=5&limit=10");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["next"], 5, "{body}");
        let (status, _) = get_json!(app, "/calls/ended?since=x");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        stop_service(&service).await;
    }

    #[actix_web::test]
    async fn events_and_histogram_start_empty() {
        let service = start_service().await;
        let app = app!(service);
        let (status, body) = get_json!(app, "/events");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!([]));
        let (status, body) = get_json!(app, "/metrics/latency_histogram");
        assert_eq!(status, StatusCode::OK);
        let bounds = body["bounds_ms"].as_array().unwrap_or_else(|| panic!("{body}"));
        assert_eq!(bounds.len(), 19, "{body}");
        assert_eq!(bounds[0].as_f64(), Some(0.05), "{body}");
        for mode in ["echo", "probe"] {
            let counts = body[mode].as_array().unwrap_or_else(|| panic!("{mode}: {body}"));
            assert_eq!(counts.len(), 20, "one more than the bounds: above the last one");
            assert!(counts.iter().all(|c| c.as_u64() == Some(0)), "{body}");
        }
        let (_, m) = get_json!(app, "/metrics");
        for mode in ["echo", "probe", "shared-echo"] {
            assert!(m["modes"][mode]["mos_avg"].is_null(), "{mode}: {m}");
        }
        stop_service(&service).await;
    }

    #[actix_web::test]
    async fn without_a_token_every_route_is_open() {
        let service = start_service().await;
        let app = app!(service);
        for path in ["/metrics", "/ports", "/actors", "/health"] {
            let resp = test::call_service(&app, request("GET", path, None).to_request()).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
        }
        stop_service(&service).await;
    }

    #[actix_web::test]
    async fn health_is_ok_even_without_ari() {
        let service = start_service().await;
        let app = app!(service);
        let (status, body) = get_json!(app, "/health");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({ "status": "ok" }));
        stop_service(&service).await;
    }

    #[actix_web::test]
    async fn not_ready_while_ari_is_unreachable() {
        let service = start_service().await;
        let app = app!(service);
        let (status, body) = get_json!(app, "/ready");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        // Open without a token, so it says how the service is, nothing of its calls (no
        // counts, no channel ids): these keys and no others.
        let mut keys: Vec<&str> = body.as_object().expect("an object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["ari", "echo", "media_engine", "ready", "reason", "supervisor"], "{body}");
        assert_eq!(body["ready"], false, "{body}");
        assert_eq!(body["ari"]["connected"], false, "{body}");
        assert_eq!(body["ari"]["connects"], 0, "{body}");
        assert_eq!(body["media_engine"], true, "{body}");
        let bound: SocketAddr = body["echo"]["bound"]
            .as_str()
            .unwrap_or_else(|| panic!("echo.bound unset: {body}"))
            .parse()
            .expect("echo.bound is an address");
        assert_eq!(bound.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(bound.port(), 0, "the bound port, not the configured 0");

        // The failed connect attempt is reported, and readiness stays false.
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            let (status, body) = get_json!(app, "/ready");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            if body["ari"]["last_error"].is_string() {
                break body;
            }
            assert!(Instant::now() < deadline, "no ARI error reported: {body}");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(body["ready"], false, "{body}");
        stop_service(&service).await;
    }

    /// The ten keys every dashboard of ours reads, with whether each is a count (integer) or a measure (float).
    const DASHBOARD_KEYS: [(&str, bool); 10] = [
        ("total_channels", true),
        ("active_channels", true),
        ("total_latencies", true),
        ("p50_latency", false),
        ("p95_latency", false),
        ("p99_latency", false),
        ("max_latency", false),
        ("avg_latency", false),
        ("late_ratio", false),
        ("packet_loss_ratio", false),
    ];

    #[actix_web::test]
    async fn metrics_json_has_the_dashboard_keys_typed_and_zero() {
        let service = start_service().await;
        let app = app!(service);
        let (status, body) = get_json!(app, "/metrics");
        assert_eq!(status, StatusCode::OK);
        for (key, integer) in DASHBOARD_KEYS {
            let value = &body[key];
            if integer {
                assert_eq!(value.as_u64(), Some(0), "{key} should be integer 0: {body}");
            } else {
                assert!(value.is_f64(), "{key} should be a float: {body}");
                assert_eq!(value.as_f64(), Some(0.0), "{key}: {body}");
            }
        }
        for mode in ["echo", "probe", "shared-echo"] {
            let m = &body["modes"][mode];
            assert!(m.is_object(), "modes.{mode}: {body}");
            assert_eq!(m["calls_total"].as_u64(), Some(0), "modes.{mode}: {body}");
            assert_eq!(m["latency"]["count"].as_u64(), Some(0), "modes.{mode}: {body}");
        }
        assert_eq!(body["rejected_calls"].as_u64(), Some(0), "{body}");
        for (object, fields) in [
            ("echo", &["packets", "bytes", "send_errors"][..]),
            ("dropped", &["foreign_source", "malformed", "media_loop"][..]),
            ("ari", &["events", "unknown_events", "malformed_events"][..]),
        ] {
            for field in fields {
                assert_eq!(body[object][field].as_u64(), Some(0), "{object}.{field}: {body}");
            }
        }
        stop_service(&service).await;
    }

    #[actix_web::test]
    async fn metrics_prometheus_is_well_formed_text() {
        let service = start_service().await;
        let app = app!(service);
        let resp = get!(app, "/metrics/prometheus");
        assert_eq!(resp.status(), StatusCode::OK);
        let content_type = resp.headers().get(header::CONTENT_TYPE).expect("content-type");
        assert!(content_type.to_str().unwrap().starts_with("text/plain"), "{content_type:?}");
        let text = String::from_utf8(test::read_body(resp).await.to_vec()).expect("UTF-8");
        let samples = check_exposition(&text);
        let value = |name: &str, labels: &[(&str, &str)]| {
            samples
                .iter()
                .find(|s| {
                    s.name == name
                        && s.labels.len() == labels.len()
                        && labels.iter().all(|(k, v)| s.labels.contains(&(k.to_string(), v.to_string())))
                })
                .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
                .value
        };
        // The live figures reach the text: the service's pool and its (idle) calls.
        assert_eq!(value("rtpvisor_ports", &[("state", "free")]), 3.0);
        assert_eq!(value("rtpvisor_ports", &[("state", "leased")]), 0.0);
        assert_eq!(value("rtpvisor_calls_total", &[("mode", "echo")]), 0.0);
        assert_eq!(value("rtpvisor_latency_seconds_count", &[("mode", "probe")]), 0.0);
        stop_service(&service).await;
    }

    #[actix_web::test]
    async fn channels_are_empty_and_an_unknown_one_is_404() {
        let service = start_service().await;
        let app = app!(service);
        let (status, body) = get_json!(app, "/channels");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!([]));
        let (status, body) = get_json!(app, "/channels/nope");
        assert_eq!(status, StatusCode::NOT_FOUND);
        let error = body["error"].as_str().unwrap_or_else(|| panic!("no error field: {body}"));
        assert!(error.contains("nope"), "{error}");
        stop_service(&service).await;
    }

    #[actix_web::test]
    async fn ports_show_the_configured_pool_all_free() {
        let service = start_service().await;
        let app = app!(service);
        let (status, body) = get_json!(app, "/ports");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["range"], serde_json::json!({ "start": 10900, "end": 10902 }), "{body}");
        assert_eq!(body["size"], 3, "{body}");
        assert_eq!(body["free"], 3, "{body}");
        assert_eq!(body["leased"], 0, "{body}");
        assert_eq!(body["leased_ports"], serde_json::json!([]), "{body}");
        stop_service(&service).await;
    }

    fn check_node(node: &Value) {
        assert!(node["name"].is_string(), "name: {node}");
        assert!(node["kind"].is_string(), "kind: {node}");
        assert!(node["state"].is_string(), "state: {node}");
        assert!(node["restarts"].is_u64(), "restarts: {node}");
        if let Some(children) = node.get("children") {
            children.as_array().expect("children is an array").iter().for_each(check_node);
        }
    }

    fn child<'a>(node: &'a Value, name: &str) -> &'a Value {
        node["children"]
            .as_array()
            .and_then(|c| c.iter().find(|n| n["name"] == name))
            .unwrap_or_else(|| panic!("no child {name} in {node}"))
    }

    #[actix_web::test]
    async fn actors_show_the_supervision_tree() {
        let service = start_service().await;
        let app = app!(service);
        let (status, root) = get_json!(app, "/actors");
        assert_eq!(status, StatusCode::OK);
        check_node(&root);
        assert_eq!(root["name"], "rtpvisor", "{root}");
        for (name, kind) in [("metrics", "MetricsActor"), ("media-engine", "MediaThread"), ("echo", "EchoActor")] {
            let node = child(&root, name);
            assert_eq!(node["kind"], kind, "{node}");
            assert_eq!(node["state"], "running", "{node}");
        }
        let supervisor = child(&root, "supervisor");
        assert_eq!(supervisor["state"], "running", "{supervisor}");
        assert_eq!(child(supervisor, "port-manager")["state"], "running", "{supervisor}");
        assert_eq!(supervisor["children"].as_array().map(Vec::len), Some(1), "no calls: {supervisor}");
        let ari = child(&root, "ari-connection");
        assert_eq!(ari["state"], "reconnecting", "{ari}");
        assert_eq!(ari["restarts"], 0, "never connected, so never restarted: {ari}");
        stop_service(&service).await;
    }

    #[actix_web::test]
    async fn after_shutdown_the_media_engine_reports_stopped() {
        let service = start_service().await;
        let app = app!(service);
        stop_service(&service).await;
        let (status, body) = get_json!(app, "/ready");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["media_engine"], false, "{body}");
        let (status, root) = get_json!(app, "/actors");
        assert_eq!(status, StatusCode::OK);
        let state = child(&root, "media-engine")["state"].as_str().unwrap_or_default().to_string();
        assert!(state.starts_with("dead") && state.contains("shut down"), "{root}");
    }
}
