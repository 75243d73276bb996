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
//! - [`loadgen`], [`check`]: the operator commands `rtpvisor loadgen` (calls placed through
//!   Asterisk, each call's figures collected from the service, SLO verdict) and `rtpvisor
//!   check` (a deployment's doctor); [`ops`] is what they share (the service's settings, its
//!   API, placing one call), [`loadgen_report`] their pure figures and table.
#![forbid(unsafe_code)]

pub mod app;
pub mod check;
pub mod config;
pub mod http;
pub mod loadgen;
pub mod loadgen_report;
pub mod ops;
pub mod prometheus;
