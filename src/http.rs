//! The HTTP API (actix-web): metrics (JSON and Prometheus), live calls, the port pool, the
//! supervision tree, health and readiness. Handlers talk to the typed [`Service`] handle only.

use actix_web::{http::StatusCode, web, HttpResponse, ResponseError};
use rtpvisor_actors::actors::Service;

use crate::prometheus;

/// Why an API request failed; mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the service is not answering: {0}")]
    Unavailable(#[from] actix::MailboxError),
    #[error("no live channel {0}")]
    NotFound(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(serde_json::json!({ "error": self.to_string() }))
    }
}

/// Registers every route; the caller provides `web::Data<Service>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/metrics/prometheus", web::get().to(metrics_prometheus))
        .route("/channels", web::get().to(channels))
        .route("/channels/{id}", web::get().to(channel))
        .route("/ports", web::get().to(ports))
        .route("/actors", web::get().to(actors))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready));
}

async fn metrics(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(svc.metrics().await?))
}

async fn metrics_prometheus(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    let m = svc.metrics().await?;
    let ports = svc.ports().await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(prometheus::render(&m, &ports)))
}

async fn channels(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(svc.channels().await?))
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

async fn actors(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(svc.actors().await?))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn ready(svc: web::Data<Service>) -> Result<HttpResponse, ApiError> {
    let r = svc.ready().await?;
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok(HttpResponse::build(status).json(r))
}
