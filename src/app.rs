//! Wiring: config in, running service out, and the one shutdown sequence. SIGTERM and SIGINT
//! are handled here and nowhere else: stop taking calls, end every call (hang up our channels,
//! destroy our bridges, release ports) within the deadline, stop HTTP, return.

use std::time::Duration;

use actix_web::{web, App, HttpServer};
use rtpvisor_actors::actors::channel::CallSettings;
use rtpvisor_actors::echo_guard::GuardSettings;
use rtpvisor_actors::naming::host_port;
use rtpvisor_actors::actors::{failure, Service, ServiceConfig};
use rtpvisor_actors::ari::client::AriSettings;

use crate::config::{Config, TOKEN_HOWTO};
use crate::http::ApiAuth;

/// Who may use the API, from `http.token` (or its file).
pub fn api_auth(cfg: &Config) -> ApiAuth {
    match &cfg.http.token {
        Some(token) => ApiAuth::bearer(token.to_secret_string()),
        None => ApiAuth::open(),
    }
}

/// The warning to log at start, if any: an API without a token that other hosts can reach
/// (the configuration allows it only with `http.allow_open`).
pub fn open_api_warning(cfg: &Config) -> Option<String> {
    let addr = cfg.http.addr;
    if !cfg.http.open_beyond_loopback() {
        return None;
    }
    Some(format!(
        "the HTTP API on {addr} is reachable from other hosts and has no token (http.allow_open): \
         anyone who reaches it reads calls and metrics; {TOKEN_HOWTO}, or bind http.addr to 127.0.0.1"
    ))
}

/// Maps the validated configuration onto what the actor system takes.
pub fn service_config(cfg: &Config) -> anyhow::Result<ServiceConfig> {
    let echo_target = host_port(cfg.echo_host(), cfg.echo.addr.port());
    Ok(ServiceConfig {
        ari: AriSettings {
            url: cfg.ari.url.trim_end_matches('/').to_string(),
            user: cfg.ari.user.clone(),
            password: cfg.ari.password.to_secret_string(),
            ca_file: cfg.ari.ca_file.as_ref().map(std::path::PathBuf::from),
            app: cfg.ari.app.clone(),
            request_timeout: Duration::from_millis(cfg.ari.request_timeout_ms),
        },
        call: CallSettings {
            media_host: cfg.media.host.clone(),
            bind_ip: cfg.media.bind_ip,
            echo_target,
            late_threshold: Duration::from_secs_f64(cfg.media.late_ms / 1000.0),
            probe_timeout: Duration::from_millis(cfg.media.probe_timeout_ms),
            no_media_timeout: Duration::from_millis(cfg.media.no_media_timeout_ms),
        },
        rtp_ports: cfg.media.rtp_ports,
        quarantine: Duration::from_millis(cfg.media.quarantine_ms),
        echo_addr: cfg.echo.addr,
        echo_workers: cfg.echo.workers as usize,
        echo_guard: GuardSettings {
            allow: cfg.echo.allow.clone(),
            rate_pps: cfg.echo.rate_pps,
            burst: cfg.echo.burst,
            max_bytes: cfg.echo.max_bytes as usize,
        },
        default_mode: cfg.media.default_mode,
        reconnect_min: Duration::from_millis(cfg.ari.reconnect_min_ms),
        reconnect_max: Duration::from_millis(cfg.ari.reconnect_max_ms),
        max_restarts: cfg.supervision.max_restarts,
        restart_window: Duration::from_millis(cfg.supervision.window_ms),
        faults_enabled: cfg.faults.enabled,
        max_calls: cfg.media.max_calls as usize,
        link_down_silence: Duration::from_millis(cfg.media.link_down_silence_ms),
        media_stall: Duration::from_millis(cfg.supervision.media_stall_ms),
        ping_interval: Duration::from_millis(cfg.ari.ping_interval_ms),
        ping_timeout: Duration::from_millis(cfg.ari.ping_timeout_ms),
    })
}

/// Runs the service until SIGTERM or SIGINT, then shuts it down in order.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let svc_cfg = service_config(&cfg)?;
    failure::install_panic_hook();
    if cfg.faults.enabled {
        log::warn!("fault injection is ENABLED (/faults/... routes, behind the API token): for tests only");
    }
    if let Some(warning) = open_api_warning(&cfg) {
        log::warn!("{warning}");
    }
    // Every local resource first (media engine, echo port, HTTP port), the Stasis app last: a
    // process that cannot start must not take the app from a healthy instance on its way out.
    let service = Service::start_local(svc_cfg).await?;
    actix_rt::spawn(watchdog(service.clone()));
    let data = web::Data::new(service.clone());
    let auth = api_auth(&cfg);
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).configure(crate::http::configure(auth.clone()))
    })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(2)
        .bind(cfg.http.addr)
        .map_err(|e| anyhow::anyhow!("cannot bind the HTTP address {}: {e}", cfg.http.addr))?
        .run();
    let handle = server.handle();
    let server_task = actix_rt::spawn(server);
    service.take_app();
    log::info!(
        "rtpvisor {} serving HTTP on {} ({}), ARI {} app {}{}",
        env!("CARGO_PKG_VERSION"),
        cfg.http.addr,
        if cfg.http.token.is_some() { "token required" } else { "no token" },
        cfg.ari.url,
        cfg.ari.app,
        match &cfg.ari.ca_file {
            Some(path) if cfg.ari.url.starts_with("https://") => format!(" (TLS, CA file {path})"),
            _ if cfg.ari.url.starts_with("https://") => " (TLS, Mozilla's roots)".to_owned(),
            _ => String::new(),
        }
    );

    let signal = wait_for_signal().await;
    log::info!("{signal} received: shutting down");
    let deadline = Duration::from_millis(cfg.shutdown_timeout_ms);
    match service.shutdown(deadline).await {
        Ok(r) if r.calls_left == 0 => {
            log::info!("all {} call(s) ended in {} ms", r.calls_ended, r.took_ms)
        }
        Ok(r) => log::warn!(
            "shutdown deadline passed with {} call(s) left ({} ended)",
            r.calls_left,
            r.calls_ended
        ),
        Err(e) => log::error!("shutdown: supervisor did not answer: {e}"),
    }
    handle.stop(true).await;
    let _ = server_task.await;
    log::info!("rtpvisor stopped");
    Ok(())
}

/// Escalation, the top of the supervision tree: a long-lived actor that died (a panic in its
/// handler; actix restarts nothing), or a media engine that died or stalled (no loop turn for
/// `supervision.media_stall_ms`), leaves the service unable to do its job. The process exits
/// with status 70 so that its own supervisor (container restart policy, systemd) starts it
/// again; the new process reconciles Asterisk at connect and ends every orphan.
async fn watchdog(service: Service) {
    let mut tick = actix_rt::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let dead = service.dead_actors();
        if !dead.is_empty() {
            let why = failure::take_last_panic().unwrap_or_else(|| "stopped".into());
            log::error!("long-lived actor(s) {dead:?} died ({why}): escalating, exiting with status 70");
            std::process::exit(70);
        }
        if let Some(why) = service.media_failure() {
            log::error!("{why}: escalating, exiting with status 70");
            std::process::exit(70);
        }
    }
}

async fn wait_for_signal() -> &'static str {
    use actix_rt::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn an_open_api_off_loopback_is_warned_about() {
        let mut cfg = Config::default();
        assert_eq!(open_api_warning(&cfg), None, "the default is loopback");
        cfg.http.addr = "0.0.0.0:9090".parse().unwrap();
        let warning = open_api_warning(&cfg).expect("0.0.0.0 without a token");
        assert!(warning.contains("0.0.0.0:9090") && warning.contains("http.token_file"), "{warning}");
        cfg.http.addr = "127.0.0.1:9090".parse().unwrap();
        assert_eq!(open_api_warning(&cfg), None);
        cfg.http.addr = "[::1]:9090".parse().unwrap();
        assert_eq!(open_api_warning(&cfg), None);
        cfg.http.addr = "0.0.0.0:9090".parse().unwrap();
        cfg.http.token = Some(Secret::new("0123456789abcdef"));
        assert_eq!(open_api_warning(&cfg), None);
    }

    #[test]
    fn service_settings_keep_the_password_secret() {
        let mut cfg = Config::default();
        cfg.ari.password = Secret::new("Zq9-distinctive-pw");
        let settings = service_config(&cfg).unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&settings.ari.password), "Zq9-distinctive-pw");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("Zq9"), "{shown}");
    }
}
