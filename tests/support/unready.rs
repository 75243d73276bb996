//! rtpvisor started without waiting for readiness, for tests of a service that is not expected
//! to get ready (a refused TLS certificate, refused credentials). Shared by e2e tests through
//! `#[path]`; it needs their `mod common`.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{free_tcp_port, free_udp_port, repo};

/// rtpvisor started without waiting for readiness (it is not expected to get ready).
pub struct Unready {
    child: Child,
    pub http: String,
    pub log: std::path::PathBuf,
}

impl Unready {
    /// Started with `env` over test defaults (free HTTP and echo ports, RTP 10710-10719).
    pub fn start(name: &str, env: &[(&str, &str)]) -> Unready {
        let http_port = free_tcp_port();
        let dir = repo().join("target/test-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtpvisor"));
        cmd.env("RTPVISOR_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("RTPVISOR_ECHO_ADDR", format!("127.0.0.1:{}", free_udp_port()))
            .env("RTPVISOR_MEDIA_BIND_IP", "127.0.0.1")
            .env("RTPVISOR_RTP_PORTS", "10710-10719")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting rtpvisor");
        Unready { child, http: format!("http://127.0.0.1:{http_port}"), log }
    }

    /// `/ready` (open without a token): status and body.
    pub fn ready(&self) -> (u16, Value) {
        match ureq::get(&format!("{}/ready", self.http)).timeout(Duration::from_secs(5)).call() {
            Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    /// Waits until `/ready` reports a connect error; returns the status and body then.
    pub fn wait_for_error(&self) -> (u16, Value) {
        let start = Instant::now();
        loop {
            let (code, body) = self.ready();
            if body["ari"]["last_error"].is_string() {
                return (code, body);
            }
            assert!(start.elapsed() < Duration::from_secs(15), "no ARI error reported: {code} {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

