//! The requests the call actors and the Supervisor await, each one async function: lease and
//! bind a port, read Asterisk's side of an existing externalMedia channel, tear a call down in
//! order, clean up after a dead call actor, read Asterisk's state and end orphans for a
//! reconciliation. IO only: what to ask for, and when, is decided by the pure modules
//! ([`crate::call`], [`crate::reconcile`], [`crate::adopt`]).

use std::net::{IpAddr, SocketAddr, UdpSocket};

use actix::prelude::*;

use super::port_manager::{AcquirePort, AcquireThisPort, Lease, PortManager};
use crate::ari::client::{AriClient, AriError};
use crate::ari::model::{unicast_rtp_address, Application, Bridge, Channel, HangupReason, UNICASTRTP_LOCAL_VARS};
use crate::call::Teardown;
use crate::media::{MediaHandle, SharedReport, StreamReport};
use crate::naming::{bridge_id, external_media_id};
use crate::ports::PoolError;

/// How often setup tries another port when the leased one is held by another process.
const BIND_ATTEMPTS: usize = 4;

/// Leases a port and binds it; a port held by another process is reported to the pool and
/// another one tried.
pub async fn lease_and_bind(ports: Addr<PortManager>, bind_ip: IpAddr) -> Result<(Lease, UdpSocket), String> {
    for _ in 0..BIND_ATTEMPTS {
        let lease = match ports.send(AcquirePort).await {
            Ok(Ok(lease)) => lease,
            Ok(Err(e @ PoolError::Exhausted { .. })) => return Err(format!("no free RTP port: {e}")),
            Ok(Err(e)) => return Err(format!("port pool: {e}")),
            Err(e) => return Err(format!("port manager unreachable: {e}")),
        };
        match UdpSocket::bind((bind_ip, lease.port())) {
            Ok(sock) => return Ok((lease, sock)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                log::warn!("port {} is in use by another process: skipping it", lease.port());
                lease.mark_unavailable();
            }
            Err(e) => return Err(format!("binding port {}: {e}", lease.port())),
        }
    }
    Err(format!("no bindable RTP port after {BIND_ATTEMPTS} attempts"))
}

/// Leases exactly `port` and binds it (an adopted call keeps the port its externalMedia channel
/// sends to): no other port will do.
pub async fn rebind(ports: Addr<PortManager>, bind_ip: IpAddr, port: u16) -> Result<(Lease, UdpSocket), String> {
    let lease = match ports.send(AcquireThisPort(port)).await {
        Ok(Ok(lease)) => lease,
        Ok(Err(e)) => return Err(format!("port pool: {e}")),
        Err(e) => return Err(format!("port manager unreachable: {e}")),
    };
    match UdpSocket::bind((bind_ip, port)) {
        Ok(sock) => Ok((lease, sock)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            lease.mark_unavailable();
            Err(format!("port {port} is held by another process now"))
        }
        Err(e) => Err(format!("binding port {port}: {e}")),
    }
}

/// Asterisk's side of our externalMedia channel for `caller_id` (its `UNICASTRTP_LOCAL_*`
/// variables); None when they are missing or unparsable.
pub async fn read_peer(ari: AriClient, caller_id: String) -> Result<Option<SocketAddr>, String> {
    let em = external_media_id(ari.app(), &caller_id);
    let [addr, port] = UNICASTRTP_LOCAL_VARS;
    let (addr, port) = futures_util::future::join(ari.channel_variable(&em, addr), ari.channel_variable(&em, port)).await;
    match (addr, port) {
        (Ok(a), Ok(p)) => Ok(unicast_rtp_address(&a, &p)),
        (Err(e), _) | (_, Err(e)) if e.is_not_found() => Ok(None),
        (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
    }
}

/// A call's final media figures: its own stream's (echo, probe) or what the shared echo
/// reflected for it (shared-echo).
#[derive(Debug, Default)]
pub struct FinalMedia {
    pub stream: Option<StreamReport>,
    pub shared: Option<SharedReport>,
}

/// Carries out a [`Teardown`] in its order: stop our media, hang up our externalMedia channel,
/// destroy our bridge, hang up the caller. Every step runs even when an earlier one failed; the
/// lease drops last.
pub async fn teardown(
    ari: AriClient,
    media: MediaHandle,
    call_no: u64,
    caller_id: String,
    plan: Teardown,
    lease: Option<Lease>,
) -> FinalMedia {
    let stream = if plan.remove_stream { media.remove(call_no).await.ok().flatten() } else { None };
    let shared = if plan.unwatch_shared { media.unwatch_shared(call_no).await.ok().flatten() } else { None };
    if let Some(r) = &shared {
        log::info!("Call {caller_id} on the shared echo: {} packets from Asterisk", r.packets);
    }
    if plan.hangup_media {
        if let Err(e) = ari.hangup(&external_media_id(ari.app(), &caller_id), HangupReason::Normal).await {
            log::error!("hanging up externalMedia channel of {caller_id} failed: {e}");
        }
    }
    if plan.destroy_bridge {
        if let Err(e) = ari.destroy_bridge(&bridge_id(ari.app(), &caller_id)).await {
            log::error!("destroying bridge of {caller_id} failed: {e}");
        }
    }
    if plan.hangup_caller {
        if let Err(e) = ari.hangup(&caller_id, HangupReason::Normal).await {
            log::error!("hanging up caller {caller_id} failed: {e}");
        }
    }
    drop(lease);
    FinalMedia { stream, shared }
}

/// What is left of a call whose actor died (its lease went with it): stop its media, hang up
/// its externalMedia channel, destroy its bridge, hang up the caller. Errors are logged.
pub async fn clean_up_failed(ari: AriClient, media: MediaHandle, call_no: u64, caller: String) {
    let _ = media.remove(call_no).await;
    let _ = media.unwatch_shared(call_no).await;
    for (what, result) in [
        ("externalMedia channel", ari.hangup(&external_media_id(ari.app(), &caller), HangupReason::Normal).await),
        ("bridge", ari.destroy_bridge(&bridge_id(ari.app(), &caller)).await),
        ("caller", ari.hangup(&caller, HangupReason::Normal).await),
    ] {
        if let Err(e) = result {
            log::error!("[Supervisor] cleaning up the {what} of failed call {caller}: {e}");
        }
    }
    log::info!("Cleaned up channel {caller} after its actor failed");
}

/// Asterisk's state as a reconciliation reads it: our application, every channel, every
/// bridge.
pub async fn fetch_state(ari: AriClient) -> Result<(Application, Vec<Channel>, Vec<Bridge>), AriError> {
    let app = ari.application().await?;
    let channels = ari.channels().await?;
    let bridges = ari.bridges().await?;
    Ok((app, channels, bridges))
}

/// Hangs up every channel in `ids` with `reason`; returns how many failed (each logged).
pub async fn hang_up_all(ari: &AriClient, ids: &[String], what: &str, reason: HangupReason) -> usize {
    let mut errors = 0;
    for id in ids {
        if let Err(e) = ari.hangup(id, reason).await {
            log::error!("[Supervisor] hanging up {what} {id} failed: {e}");
            errors += 1;
        }
    }
    errors
}

/// Destroys every bridge in `ids`; returns how many failed (each logged).
pub async fn destroy_all(ari: &AriClient, ids: &[String]) -> usize {
    let mut errors = 0;
    for id in ids {
        if let Err(e) = ari.destroy_bridge(id).await {
            log::error!("[Supervisor] destroying orphan bridge {id} failed: {e}");
            errors += 1;
        }
    }
    errors
}
