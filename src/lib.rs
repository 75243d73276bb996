//! # rtpvisor (service crate)
//!
//! The service around the actor system of `rtpvisor-actors`: configuration, the HTTP API, and
//! the wiring that `main` runs.
//!
//! # Layout
//! - [`config`]: settings from defaults, TOML file, environment and CLI, validated.
//! - [`app`]: turns a [`config::Config`] into a running service and owns shutdown.
//! - [`http`]: the actix-web routes (`/metrics`, `/channels`, `/ports`, `/actors`, ...) and the
//!   bearer-token guard in front of all but `/health` and `/ready`; `GET /` serves the
//!   dashboard, `dashboard.html` (plain HTML and JavaScript, compiled in).
//! - [`prometheus`]: the Prometheus text rendering of the metrics (pure).
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod http;
pub mod prometheus;
