//! What a call's actor is told and tells, and what it works with.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use actix::prelude::*;

use crate::actors::metrics::{EndReason, MetricsActor};
use crate::actors::port_manager::PortManager;
use crate::ari::client::AriClient;
use crate::call::CallState;
use crate::media::MediaHandle;
use crate::mode::CallMode;
use crate::registry::Gone;

/// Settings every call shares.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Host (IP or name) Asterisk sends a call's RTP to: our leased ports are reached there.
    pub media_host: String,
    /// Address the call sockets bind to.
    pub bind_ip: IpAddr,
    /// Where Asterisk reaches the shared EchoActor (host:port) for shared-echo calls.
    pub echo_target: String,
    pub late_threshold: Duration,
    pub probe_timeout: Duration,
    /// End a call whose media stopped for this long (zero: never); shared-echo calls are
    /// watched at the echo from their Asterisk address.
    pub no_media_timeout: Duration,
}

/// A resource of this call ended in Asterisk: tear the call down.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ResourceGone {
    pub which: Gone,
    pub event: &'static str,
}

/// The service decided to end the call (shutdown, no media, vanished caller, silent while the
/// ARI link is down).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct EndCall {
    pub reason: EndReason,
    /// For the log.
    pub why: &'static str,
}

/// The call's externalMedia channel entered Stasis: it may be added to the bridge now.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct MediaInStasis;

/// A fault injected for tests: panic in this actor's handler.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// The call's progress, for the owner's registry.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CallUpdate {
    pub caller_id: String,
    pub state: CallState,
    pub port: Option<u16>,
    pub asterisk: Option<SocketAddr>,
}

/// The actor finished (torn down or refused): the owner forgets the call.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChannelDone {
    pub caller_id: String,
    /// Setup failed part way: a request that timed out may still be executed by Asterisk
    /// later, creating what teardown already deleted; the owner reconciles later.
    pub setup_failed: bool,
}

/// The actor ended without finishing its call (it panicked). The owner's policy: no restart;
/// end the call cleanly in Asterisk and count the failure.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChannelFailed {
    pub caller_id: String,
    pub call_no: u64,
    pub mode: CallMode,
}

/// Where a call actor reports.
#[derive(Clone)]
pub struct CallOwner {
    pub updates: Recipient<CallUpdate>,
    pub done: Recipient<ChannelDone>,
    pub failed: Recipient<ChannelFailed>,
}

/// What every call's actor works with: the handles and settings its owner shares.
#[derive(Clone)]
pub struct CallContext {
    pub ari: AriClient,
    pub ports: Addr<PortManager>,
    pub media: MediaHandle,
    pub metrics: Addr<MetricsActor>,
    pub owner: CallOwner,
    pub settings: CallSettings,
}

