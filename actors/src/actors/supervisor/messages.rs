//! The Supervisor's messages and the answers it gives.

use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use super::super::failure::FailureRecord;
use crate::ari::model::Event;
use crate::media::IdleReason;
pub use crate::registry::CallInfo;

/// An event from the ARI connection.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct AriEvent(pub Event);

/// A StasisStart that could not be decoded: its caller is answered at once (hung up with
/// congestion, counted) instead of waiting in silence for a reconciliation.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct UndecodableStasisStart {
    pub channel_id: String,
    pub error: String,
}

/// The events WebSocket is (re)connected: adopt the live calls a previous process left, then
/// end what is orphaned.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct AriConnected {
    pub first: bool,
}

/// The events WebSocket is down (lost, declared dead, or the app was taken by another
/// client): no events can arrive until [`AriConnected`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct AriDisconnected {
    pub reason: String,
}

/// The media engine saw no packet on this call's stream (or, for a shared-echo call, from its
/// Asterisk address at the echo) for the no-media timeout, or for the link-down silence while
/// the ARI link is down.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct MediaIdle(pub u64, pub IdleReason);

/// Fault injection: make the ChannelActor of this call (channel id or call number) panic.
/// Answers whether such a call exists.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct InjectChannelPanic(pub String);

/// Fault injection: panic in the supervisor itself (escalates: the process exits).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct InjectSupervisorPanic;

#[derive(Message)]
#[rtype(result = "SupervisorStatus")]
pub struct GetSupervisorStatus;

/// The supervisor's own state, for `/actors`, `/ready` and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorStatus {
    /// `running`, `degraded` (restart intensity exceeded: new calls refused until the window
    /// clears) or `shutting_down`.
    pub state: &'static str,
    /// ChannelActors that died without finishing their call, since start.
    pub channel_failures: u64,
    /// Failures within the current window, and its limits.
    pub recent_failures: usize,
    pub max_restarts: u32,
    pub window_ms: u64,
    pub last_failure: Option<FailureRecord>,
}

/// Stop taking calls, end every call, answer when all are gone or the deadline passed.
#[derive(Message, Debug)]
#[rtype(result = "ShutdownReport")]
pub struct Shutdown {
    pub deadline: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShutdownReport {
    pub calls_ended: usize,
    pub calls_left: usize,
    pub took_ms: u64,
}

#[derive(Message)]
#[rtype(result = "Vec<CallInfo>")]
pub struct GetCalls;

