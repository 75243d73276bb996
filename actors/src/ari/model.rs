//! ARI resources and events as plain data, and the decoding of event messages.
//!
//! Owns: the resource types rtpvisor reads from Asterisk 22's ARI (channel, bridge, application,
//! system info), the [`Event`]s it acts on, decoded by their `type` field ([`decode_event`]),
//! and the pure parameter sets of the REST calls it makes ([`HangupReason`],
//! [`ExternalMediaParams`]).
//!
//! No IO here: no HTTP, no WebSocket, no sockets. The ARI client feeds the text of each
//! WebSocket message to [`decode_event`] and sends what [`ExternalMediaParams::query`] gives.
//!
//! Field names follow the Swagger models in Asterisk's `rest-api/api-docs/` (`events.json`,
//! `channels.json`, `bridges.json`, `applications.json`, `asterisk.json`, checked at 22.9.0).
//! Unknown JSON fields are ignored, so newer Asterisk versions that add fields still decode.
//! Fields we do not need to act are `#[serde(default)]`, so a sparse message is not lost.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The errors of this module: why an event message was not decoded. The caller logs and skips
/// the message; a bad message is never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The text is not JSON. Holds serde_json's message (position included) rather than the
    /// error itself, so the enum stays `Clone + Eq` and serde_json stays out of the public API.
    #[error("event is not valid JSON: {0}")]
    Json(String),
    /// The JSON has no string `type` field (or is not an object), so it is no ARI message.
    #[error("event has no `type` field")]
    MissingType,
    /// A StasisStart whose fields are missing or of the wrong type, but that names its
    /// channel: the caller waits in Stasis for an answer, so it is told apart.
    #[error("bad StasisStart event for channel {channel_id}: {reason}")]
    BadStasisStart {
        /// `channel.id`.
        channel_id: String,
        /// What serde found wrong.
        reason: String,
    },
    /// A known event type whose required fields are missing or of the wrong type.
    #[error("bad {kind} event: {reason}")]
    BadEvent {
        /// The event's `type`.
        kind: String,
        /// What serde found wrong, e.g. "missing field `channel`".
        reason: String,
    },
}

/// Caller identification (ARI `CallerID`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct CallerId {
    /// Caller ID name; empty when unknown.
    #[serde(default)]
    pub name: String,
    /// Caller ID number; empty when unknown.
    #[serde(default)]
    pub number: String,
}

/// A dialplan location (ARI `DialplanCEP`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct DialplanCep {
    /// Dialplan context.
    pub context: String,
    /// Extension.
    pub exten: String,
    /// Priority (a Swagger `long`).
    pub priority: i64,
    /// Current dialplan application, e.g. `Stasis`. Optional here because older versions
    /// lacked it and we only show it.
    #[serde(default)]
    pub app_name: Option<String>,
    /// Its argument string, e.g. `rtpvisor,probe`.
    #[serde(default)]
    pub app_data: Option<String>,
}

/// A channel (ARI `Channel`). Only `id`, `name` and `state` are required: they are all the
/// supervisor needs to act, and the rest is for display and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Channel {
    /// Unique id (the AMI Uniqueid), the key of every channel operation.
    pub id: String,
    /// Channel name, e.g. `PJSIP/alice-00000006` or `UnicastRTP/127.0.0.1:10000-0x7f...`.
    pub name: String,
    /// State as ARI spells it: `Down`, `Ring`, `Ringing`, `Up`, ...
    pub state: String,
    /// Caller ID.
    #[serde(default)]
    pub caller: CallerId,
    /// Connected line ID.
    #[serde(default)]
    pub connected: CallerId,
    /// Current dialplan location.
    #[serde(default)]
    pub dialplan: Option<DialplanCep>,
    /// Creation time as Asterisk formats it (`2025-01-15T10:21:33.401+0000`); kept as text
    /// because we only display it.
    #[serde(default)]
    pub creationtime: Option<String>,
    /// Default spoken language.
    #[serde(default)]
    pub language: Option<String>,
    /// Channel variables. Present in the externalMedia response, and in events for variables
    /// listed in ari.conf `channelvars`.
    #[serde(default)]
    pub channelvars: Option<HashMap<String, String>>,
}

/// Channel variable chan_rtp sets to the local address of an externalMedia channel's RTP.
const UNICASTRTP_LOCAL_ADDRESS: &str = "UNICASTRTP_LOCAL_ADDRESS";
/// Channel variable chan_rtp sets to the local port of an externalMedia channel's RTP.
const UNICASTRTP_LOCAL_PORT: &str = "UNICASTRTP_LOCAL_PORT";
/// The variables chan_rtp sets on an externalMedia channel, in the order
/// [`unicast_rtp_address`] takes them.
pub const UNICASTRTP_LOCAL_VARS: [&str; 2] = [UNICASTRTP_LOCAL_ADDRESS, UNICASTRTP_LOCAL_PORT];

/// Asterisk's side of an externalMedia channel from the values of `UNICASTRTP_LOCAL_ADDRESS`
/// and `UNICASTRTP_LOCAL_PORT` (an IPv6 address may come bracketed). None when either is
/// unparsable, or the port is 0 (not a place to send to).
pub fn unicast_rtp_address(addr: &str, port: &str) -> Option<SocketAddr> {
    let addr = addr.trim();
    let addr = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    let ip: IpAddr = addr.parse().ok()?;
    let port: u16 = port.trim().parse().ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// Name prefix of channels created by POST /channels/externalMedia with RTP encapsulation.
const UNICAST_RTP_PREFIX: &str = "UnicastRTP/";

impl Channel {
    /// Where Asterisk sends from and expects our RTP on, for an externalMedia (UnicastRTP)
    /// channel: channelvars `UNICASTRTP_LOCAL_ADDRESS` + `UNICASTRTP_LOCAL_PORT`.
    ///
    /// `None` when either variable is missing or unparsable, or the port is 0 (not a place
    /// anything can be sent). Asterisk writes an IPv6 address bare; brackets are tolerated.
    pub fn unicast_rtp_local(&self) -> Option<SocketAddr> {
        let vars = self.channelvars.as_ref()?;
        unicast_rtp_address(vars.get(UNICASTRTP_LOCAL_ADDRESS)?, vars.get(UNICASTRTP_LOCAL_PORT)?)
    }

    /// True for channels whose name starts with `UnicastRTP/` (externalMedia).
    pub fn is_external_media(&self) -> bool {
        self.name.starts_with(UNICAST_RTP_PREFIX)
    }
}

/// A bridge (ARI `Bridge`). Only `id` is required; the rest is informational.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Bridge {
    /// Unique id.
    pub id: String,
    /// Current bridging technology, e.g. `simple_bridge`, `softmix`.
    #[serde(default)]
    pub technology: String,
    /// `mixing` or `holding`.
    #[serde(default)]
    pub bridge_type: String,
    /// Bridging class, `stasis` for bridges made over ARI.
    #[serde(default)]
    pub bridge_class: String,
    /// Name the creator gave the bridge.
    #[serde(default)]
    pub name: String,
    /// Ids of the channels in the bridge.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Entity that created the bridge (`Stasis` for ARI).
    #[serde(default)]
    pub creator: String,
}

/// A Stasis application (ARI `Application`), as GET /applications/{name} returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Application {
    /// Application name.
    pub name: String,
    /// Channels subscribed to.
    #[serde(default)]
    pub channel_ids: Vec<String>,
    /// Bridges subscribed to.
    #[serde(default)]
    pub bridge_ids: Vec<String>,
    /// Endpoints subscribed to, as `{tech}/{resource}`.
    #[serde(default)]
    pub endpoint_ids: Vec<String>,
    /// Devices subscribed to.
    #[serde(default)]
    pub device_names: Vec<String>,
}

/// GET /asterisk/info (ARI `AsteriskInfo`); we only read the system part, to log the version
/// and check we reach the Asterisk we expect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct AsteriskInfo {
    /// Info about the system running Asterisk (absent when filtered with `only=`).
    #[serde(default)]
    pub system: Option<SystemInfo>,
}

/// ARI `SystemInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct SystemInfo {
    /// Asterisk version, e.g. `22.5.2`.
    #[serde(default)]
    pub version: String,
    /// Entity id (a MAC-like string); the `asterisk_id` of events.
    #[serde(default)]
    pub entity_id: String,
}

/// An ARI event rtpvisor acts on. The envelope fields `timestamp` and `asterisk_id` are not
/// kept: nothing downstream uses them, and the caller stamps arrival with its own clock.
// Variants holding two channels are ~800 bytes. Events come at signalling rate (a handful per
// call) and are moved once into an actor message, so boxing would only make every match and
// constructor clumsier for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A channel entered our Stasis application.
    StasisStart {
        /// Application the channel entered.
        application: String,
        /// The channel.
        channel: Channel,
        /// Arguments of `Stasis(app,arg1,...)`, or appArgs of an originate; may be empty.
        args: Vec<String>,
        /// The channel this one replaces (after a masquerade or transfer), if any.
        replace_channel: Option<Channel>,
    },
    /// A channel left our Stasis application.
    StasisEnd {
        /// Application the channel left.
        application: String,
        /// The channel.
        channel: Channel,
    },
    /// A channel was destroyed; the hangup cause is final.
    ChannelDestroyed {
        /// The channel.
        channel: Channel,
        /// Q.850 cause code, e.g. 16 (normal clearing).
        cause: i32,
        /// Its text, e.g. `Normal Clearing`.
        cause_txt: String,
    },
    /// A hangup was requested on a channel.
    ChannelHangupRequest {
        /// The channel.
        channel: Channel,
        /// Q.850 cause code, when the request carried one.
        cause: Option<i32>,
        /// Soft hangup request (absent in the message means false).
        soft: bool,
    },
    /// A channel's state changed (e.g. `Ring` -> `Up` after answer).
    ChannelStateChange {
        /// The channel, with its new state.
        channel: Channel,
    },
    /// A channel entered a bridge.
    ChannelEnteredBridge {
        /// The bridge, after the channel entered.
        bridge: Bridge,
        /// The channel. Optional in the Swagger model, but Asterisk 22 never sends the event
        /// without it (main/stasis_bridges.c drops the message instead), so it is required.
        channel: Channel,
    },
    /// A channel left a bridge.
    ChannelLeftBridge {
        /// The bridge, after the channel left.
        bridge: Bridge,
        /// The channel.
        channel: Channel,
    },
    /// A bridge was created.
    BridgeCreated {
        /// The bridge.
        bridge: Bridge,
    },
    /// A bridge was destroyed.
    BridgeDestroyed {
        /// The bridge.
        bridge: Bridge,
    },
    /// A DTMF digit ended on a channel.
    ChannelDtmfReceived {
        /// The channel.
        channel: Channel,
        /// `0`-`9`, `A`-`E`, `#` or `*`.
        digit: String,
        /// How long the digit was held.
        duration_ms: i64,
    },
    /// Another WebSocket subscribed to our application and took it over; we get no more
    /// events on this socket.
    ApplicationReplaced {
        /// The application taken over.
        application: String,
    },
    /// A type we don't handle: tolerated, counted by the caller.
    Unknown {
        /// The event's `type`.
        kind: String,
    },
}

impl Event {
    /// The ARI type name (the `type` field), also for [`Event::Unknown`].
    pub fn kind(&self) -> &str {
        match self {
            Event::StasisStart { .. } => "StasisStart",
            Event::StasisEnd { .. } => "StasisEnd",
            Event::ChannelDestroyed { .. } => "ChannelDestroyed",
            Event::ChannelHangupRequest { .. } => "ChannelHangupRequest",
            Event::ChannelStateChange { .. } => "ChannelStateChange",
            Event::ChannelEnteredBridge { .. } => "ChannelEnteredBridge",
            Event::ChannelLeftBridge { .. } => "ChannelLeftBridge",
            Event::BridgeCreated { .. } => "BridgeCreated",
            Event::BridgeDestroyed { .. } => "BridgeDestroyed",
            Event::ChannelDtmfReceived { .. } => "ChannelDtmfReceived",
            Event::ApplicationReplaced { .. } => "ApplicationReplaced",
            Event::Unknown { kind } => kind,
        }
    }

    /// The id of the channel the event is about, for routing it to that channel's actor.
    pub fn channel_id(&self) -> Option<&str> {
        match self {
            Event::StasisStart { channel, .. }
            | Event::StasisEnd { channel, .. }
            | Event::ChannelDestroyed { channel, .. }
            | Event::ChannelHangupRequest { channel, .. }
            | Event::ChannelStateChange { channel }
            | Event::ChannelEnteredBridge { channel, .. }
            | Event::ChannelLeftBridge { channel, .. }
            | Event::ChannelDtmfReceived { channel, .. } => Some(&channel.id),
            Event::BridgeCreated { .. }
            | Event::BridgeDestroyed { .. }
            | Event::ApplicationReplaced { .. }
            | Event::Unknown { .. } => None,
        }
    }

    /// The id of the bridge the event is about.
    pub fn bridge_id(&self) -> Option<&str> {
        match self {
            Event::ChannelEnteredBridge { bridge, .. }
            | Event::ChannelLeftBridge { bridge, .. }
            | Event::BridgeCreated { bridge }
            | Event::BridgeDestroyed { bridge } => Some(&bridge.id),
            Event::StasisStart { .. }
            | Event::StasisEnd { .. }
            | Event::ChannelDestroyed { .. }
            | Event::ChannelHangupRequest { .. }
            | Event::ChannelStateChange { .. }
            | Event::ChannelDtmfReceived { .. }
            | Event::ApplicationReplaced { .. }
            | Event::Unknown { .. } => None,
        }
    }
}

// Wire shapes of the events we handle: exactly the fields we keep, required as the Swagger
// model requires them (except where noted on `Event`). serde ignores the other fields.

#[derive(Deserialize)]
struct StasisStartWire {
    application: String,
    channel: Channel,
    args: Vec<String>,
    #[serde(default)]
    replace_channel: Option<Channel>,
}

#[derive(Deserialize)]
struct ApplicationChannelWire {
    application: String,
    channel: Channel,
}

#[derive(Deserialize)]
struct ChannelWire {
    channel: Channel,
}

#[derive(Deserialize)]
struct ChannelDestroyedWire {
    channel: Channel,
    cause: i32,
    cause_txt: String,
}

#[derive(Deserialize)]
struct ChannelHangupRequestWire {
    channel: Channel,
    #[serde(default)]
    cause: Option<i32>,
    #[serde(default)]
    soft: Option<bool>,
}

#[derive(Deserialize)]
struct BridgeChannelWire {
    bridge: Bridge,
    channel: Channel,
}

#[derive(Deserialize)]
struct BridgeWire {
    bridge: Bridge,
}

#[derive(Deserialize)]
struct DtmfWire {
    channel: Channel,
    digit: String,
    duration_ms: i64,
}

#[derive(Deserialize)]
struct ApplicationWire {
    application: String,
}

/// Deserializes the fields of a `kind` event, mapping failures to [`DecodeError::BadEvent`].
fn fields<T: DeserializeOwned>(kind: &str, value: &Value) -> Result<T, DecodeError> {
    T::deserialize(value).map_err(|e| DecodeError::BadEvent {
        kind: kind.to_owned(),
        reason: e.to_string(),
    })
}

/// Decodes one events-WebSocket message.
///
/// Malformed JSON, missing `type`, or a known type whose required fields are missing/wrong ->
/// `Err` (the caller logs and skips). Unknown `type` -> `Ok(Event::Unknown)`, so a new Asterisk
/// event type never breaks the stream.
pub fn decode_event(text: &str) -> Result<Event, DecodeError> {
    // Two steps (to a Value, then by type) so that an unknown type is told apart from a bad
    // known one, which one internally tagged serde enum cannot do.
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or(DecodeError::MissingType)?;
    let event = match kind {
        "StasisStart" => {
            let w: StasisStartWire = fields(kind, &value).map_err(|e| {
                match (value.pointer("/channel/id").and_then(Value::as_str), e) {
                    (Some(id), DecodeError::BadEvent { reason, .. }) => {
                        DecodeError::BadStasisStart { channel_id: id.to_string(), reason }
                    }
                    (_, e) => e,
                }
            })?;
            Event::StasisStart {
                application: w.application,
                channel: w.channel,
                args: w.args,
                replace_channel: w.replace_channel,
            }
        }
        "StasisEnd" => {
            let w: ApplicationChannelWire = fields(kind, &value)?;
            Event::StasisEnd {
                application: w.application,
                channel: w.channel,
            }
        }
        "ChannelDestroyed" => {
            let w: ChannelDestroyedWire = fields(kind, &value)?;
            Event::ChannelDestroyed {
                channel: w.channel,
                cause: w.cause,
                cause_txt: w.cause_txt,
            }
        }
        "ChannelHangupRequest" => {
            let w: ChannelHangupRequestWire = fields(kind, &value)?;
            Event::ChannelHangupRequest {
                channel: w.channel,
                cause: w.cause,
                soft: w.soft.unwrap_or(false),
            }
        }
        "ChannelStateChange" => {
            let w: ChannelWire = fields(kind, &value)?;
            Event::ChannelStateChange { channel: w.channel }
        }
        "ChannelEnteredBridge" => {
            let w: BridgeChannelWire = fields(kind, &value)?;
            Event::ChannelEnteredBridge {
                bridge: w.bridge,
                channel: w.channel,
            }
        }
        "ChannelLeftBridge" => {
            let w: BridgeChannelWire = fields(kind, &value)?;
            Event::ChannelLeftBridge {
                bridge: w.bridge,
                channel: w.channel,
            }
        }
        "BridgeCreated" => Event::BridgeCreated {
            bridge: fields::<BridgeWire>(kind, &value)?.bridge,
        },
        "BridgeDestroyed" => Event::BridgeDestroyed {
            bridge: fields::<BridgeWire>(kind, &value)?.bridge,
        },
        "ChannelDtmfReceived" => {
            let w: DtmfWire = fields(kind, &value)?;
            Event::ChannelDtmfReceived {
                channel: w.channel,
                digit: w.digit,
                duration_ms: w.duration_ms,
            }
        }
        "ApplicationReplaced" => Event::ApplicationReplaced {
            application: fields::<ApplicationWire>(kind, &value)?.application,
        },
        other => Event::Unknown {
            kind: other.to_owned(),
        },
    };
    Ok(event)
}

/// ARI hangup reasons for `DELETE /channels/{id}?reason=...` (the subset rtpvisor uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupReason {
    /// Normal clearing (cause 16).
    Normal,
    /// User busy (17).
    Busy,
    /// Congestion (34): no capacity, e.g. the port pool is exhausted.
    Congestion,
    /// No answer (19).
    NoAnswer,
    /// Timeout.
    Timeout,
    /// Call rejected (21).
    Rejected,
    /// Unallocated number (1).
    Unallocated,
}

impl HangupReason {
    /// The exact string ARI accepts in `reason=`.
    pub fn as_str(&self) -> &'static str {
        match self {
            HangupReason::Normal => "normal",
            HangupReason::Busy => "busy",
            HangupReason::Congestion => "congestion",
            HangupReason::NoAnswer => "no_answer",
            HangupReason::Timeout => "timeout",
            HangupReason::Rejected => "rejected",
            HangupReason::Unallocated => "unallocated",
        }
    }
}

impl fmt::Display for HangupReason {
    /// Same text as [`HangupReason::as_str`], for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parameters of `POST /channels/externalMedia`, as pure data; [`ExternalMediaParams::query`]
/// gives the query pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalMediaParams {
    /// Stasis application the new channel enters.
    pub app: String,
    /// `host:port` where Asterisk sends the channel's RTP: our leased port.
    pub external_host: String,
    /// Audio format, e.g. `ulaw`.
    pub format: String,
    /// Id to give the channel, so we know it before the response (and its StasisStart) arrive.
    pub channel_id: Option<String>,
    /// `rtp` (ARI default).
    pub encapsulation: String,
    /// `udp` (ARI default).
    pub transport: String,
    /// `client`: Asterisk sends to `external_host` (ARI default).
    pub connection_type: String,
    /// `both` (the only value ARI allows).
    pub direction: String,
}

impl ExternalMediaParams {
    /// Parameters with ARI's defaults spelled out (rtp over udp, client, both directions), so
    /// the request does not depend on the server's defaults.
    pub fn new(
        app: impl Into<String>,
        external_host: impl Into<String>,
        format: impl Into<String>,
    ) -> Self {
        Self {
            app: app.into(),
            external_host: external_host.into(),
            format: format.into(),
            channel_id: None,
            encapsulation: "rtp".to_owned(),
            transport: "udp".to_owned(),
            connection_type: "client".to_owned(),
            direction: "both".to_owned(),
        }
    }

    /// The query pairs, unencoded (the client URL-encodes them). Names are ARI's: note the
    /// camelCase `channelId` next to snake_case `external_host`.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![
            ("app", self.app.clone()),
            ("external_host", self.external_host.clone()),
            ("format", self.format.clone()),
            ("encapsulation", self.encapsulation.clone()),
            ("transport", self.transport.clone()),
            ("connection_type", self.connection_type.clone()),
            ("direction", self.direction.clone()),
        ];
        if let Some(id) = &self.channel_id {
            q.push(("channelId", id.clone()));
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A StasisStart for a PJSIP caller, as Asterisk 22 sends it for `Stasis(rtpvisor,probe)`.
    const STASIS_START_PJSIP: &str = r#"{
      "type": "StasisStart",
      "timestamp": "2025-01-15T10:21:33.412+0000",
      "args": ["probe"],
      "channel": {
        "id": "1736936493.12",
        "name": "PJSIP/alice-00000006",
        "state": "Ring",
        "protocol_id": "a84f0b3c-5e1d-4d0e-9c47-2f1b0e9a1d22",
        "caller": {"name": "Alice", "number": "1001"},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {
          "context": "rtpvisor",
          "exten": "600",
          "priority": 2,
          "app_name": "Stasis",
          "app_data": "rtpvisor,probe"
        },
        "creationtime": "2025-01-15T10:21:33.401+0000",
        "language": "en"
      },
      "asterisk_id": "02:42:ac:11:00:02",
      "application": "rtpvisor"
    }"#;

    /// The StasisStart of an externalMedia channel: args empty, chan_rtp's variables set.
    const STASIS_START_EXTERNAL: &str = r#"{
      "type": "StasisStart",
      "timestamp": "2025-01-15T10:21:33.530+0000",
      "args": [],
      "channel": {
        "id": "rtpvisor-em-1736936493.12",
        "name": "UnicastRTP/127.0.0.1:10000-0x7f3a2c00a1b0",
        "state": "Down",
        "protocol_id": "",
        "caller": {"name": "", "number": ""},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {
          "context": "default",
          "exten": "s",
          "priority": 1,
          "app_name": "",
          "app_data": ""
        },
        "creationtime": "2025-01-15T10:21:33.529+0000",
        "language": "en",
        "channelvars": {
          "UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1",
          "UNICASTRTP_LOCAL_PORT": "16384"
        }
      },
      "asterisk_id": "02:42:ac:11:00:02",
      "application": "rtpvisor"
    }"#;

    const CHANNEL_DESTROYED: &str = r#"{
      "type": "ChannelDestroyed",
      "timestamp": "2025-01-15T10:22:03.002+0000",
      "cause": 16,
      "cause_txt": "Normal Clearing",
      "tech_cause": 0,
      "channel": {
        "id": "1736936493.12",
        "name": "PJSIP/alice-00000006",
        "state": "Up",
        "protocol_id": "a84f0b3c-5e1d-4d0e-9c47-2f1b0e9a1d22",
        "caller": {"name": "Alice", "number": "1001"},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {"context": "rtpvisor", "exten": "600", "priority": 2,
                     "app_name": "Stasis", "app_data": "rtpvisor,probe"},
        "creationtime": "2025-01-15T10:21:33.401+0000",
        "language": "en"
      },
      "asterisk_id": "02:42:ac:11:00:02",
      "application": "rtpvisor"
    }"#;

    const BRIDGE: &str = r#"{
      "id": "rtpvisor-br-1736936493.12",
      "technology": "simple_bridge",
      "bridge_type": "mixing",
      "bridge_class": "stasis",
      "creator": "Stasis",
      "name": "rtpvisor",
      "channels": ["1736936493.12", "rtpvisor-em-1736936493.12"],
      "creationtime": "2025-01-15T10:21:33.540+0000",
      "video_mode": "none"
    }"#;

    /// A minimal channel object, for events whose channel details don't matter.
    const CHANNEL: &str = r#"{"id": "1736936493.12", "name": "PJSIP/alice-00000006",
      "state": "Up", "protocol_id": "", "caller": {"name": "Alice", "number": "1001"},
      "connected": {"name": "", "number": ""}, "accountcode": "",
      "dialplan": {"context": "rtpvisor", "exten": "600", "priority": 2,
                   "app_name": "Stasis", "app_data": "rtpvisor,probe"},
      "creationtime": "2025-01-15T10:21:33.401+0000", "language": "en"}"#;

    /// An event of `kind` with the given extra fields and the usual envelope.
    fn event_json(kind: &str, extra: &str) -> String {
        format!(
            r#"{{"type": "{kind}", "timestamp": "2025-01-15T10:21:40.000+0000",
                 "asterisk_id": "02:42:ac:11:00:02", "application": "rtpvisor"{extra}}}"#
        )
    }

    fn channel() -> Channel {
        serde_json::from_str(CHANNEL).unwrap()
    }

    fn bridge() -> Bridge {
        serde_json::from_str(BRIDGE).unwrap()
    }

    fn channel_with_vars(vars: &[(&str, &str)]) -> Channel {
        let mut c = channel();
        c.channelvars = Some(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        c
    }

    fn bad_event(text: &str) -> (String, String) {
        match decode_event(text) {
            Err(DecodeError::BadEvent { kind, reason }) => (kind, reason),
            // A StasisStart that names its channel keeps the id, to answer its caller.
            Err(DecodeError::BadStasisStart { channel_id, reason }) => {
                assert!(!channel_id.is_empty());
                ("StasisStart".into(), reason)
            }
            other => panic!("expected BadEvent, got {other:?}"),
        }
    }

    #[test]
    fn stasis_start_of_a_pjsip_caller() {
        let ev = decode_event(STASIS_START_PJSIP).unwrap();
        let Event::StasisStart {
            application,
            channel,
            args,
            replace_channel,
        } = &ev
        else {
            panic!("{ev:?}")
        };
        assert_eq!(application, "rtpvisor");
        assert_eq!(args, &["probe"]);
        assert_eq!(replace_channel, &None);
        assert_eq!(channel.id, "1736936493.12");
        assert_eq!(channel.name, "PJSIP/alice-00000006");
        assert_eq!(channel.state, "Ring");
        assert_eq!(
            channel.caller,
            CallerId {
                name: "Alice".into(),
                number: "1001".into()
            }
        );
        assert_eq!(channel.connected, CallerId::default());
        let dp = channel.dialplan.as_ref().unwrap();
        assert_eq!(
            (dp.context.as_str(), dp.exten.as_str(), dp.priority),
            ("rtpvisor", "600", 2)
        );
        assert_eq!(dp.app_name.as_deref(), Some("Stasis"));
        assert_eq!(dp.app_data.as_deref(), Some("rtpvisor,probe"));
        assert_eq!(
            channel.creationtime.as_deref(),
            Some("2025-01-15T10:21:33.401+0000")
        );
        assert_eq!(channel.language.as_deref(), Some("en"));
        assert_eq!(channel.channelvars, None);
        assert!(!channel.is_external_media());
        assert_eq!(channel.unicast_rtp_local(), None);
        assert_eq!(ev.kind(), "StasisStart");
        assert_eq!(ev.channel_id(), Some("1736936493.12"));
        assert_eq!(ev.bridge_id(), None);
    }

    #[test]
    fn stasis_start_of_an_external_media_channel() {
        let ev = decode_event(STASIS_START_EXTERNAL).unwrap();
        let Event::StasisStart { channel, args, .. } = &ev else {
            panic!("{ev:?}")
        };
        assert!(args.is_empty());
        assert!(channel.is_external_media());
        assert_eq!(channel.state, "Down");
        assert_eq!(
            channel.unicast_rtp_local(),
            Some("127.0.0.1:16384".parse().unwrap())
        );
        assert_eq!(ev.channel_id(), Some("rtpvisor-em-1736936493.12"));
    }

    #[test]
    fn stasis_start_with_replace_channel() {
        let text = event_json(
            "StasisStart",
            &format!(r#", "args": [], "channel": {CHANNEL}, "replace_channel": {CHANNEL}"#),
        );
        let Event::StasisStart {
            replace_channel, ..
        } = decode_event(&text).unwrap()
        else {
            panic!()
        };
        assert_eq!(replace_channel, Some(channel()));
    }

    #[test]
    fn stasis_end() {
        let ev = decode_event(&event_json(
            "StasisEnd",
            &format!(r#", "channel": {CHANNEL}"#),
        ))
        .unwrap();
        assert_eq!(
            ev,
            Event::StasisEnd {
                application: "rtpvisor".into(),
                channel: channel()
            }
        );
        assert_eq!(
            (ev.kind(), ev.channel_id(), ev.bridge_id()),
            ("StasisEnd", Some("1736936493.12"), None)
        );
    }

    #[test]
    fn channel_destroyed_with_cause_16() {
        let ev = decode_event(CHANNEL_DESTROYED).unwrap();
        let Event::ChannelDestroyed {
            channel,
            cause,
            cause_txt,
        } = &ev
        else {
            panic!("{ev:?}")
        };
        assert_eq!((*cause, cause_txt.as_str()), (16, "Normal Clearing"));
        assert_eq!(channel.state, "Up");
        assert_eq!(
            (ev.kind(), ev.channel_id(), ev.bridge_id()),
            ("ChannelDestroyed", Some("1736936493.12"), None)
        );
    }

    #[test]
    fn channel_hangup_request_with_and_without_cause() {
        let full = event_json(
            "ChannelHangupRequest",
            &format!(r#", "cause": 16, "tech_cause": 0, "soft": true, "channel": {CHANNEL}"#),
        );
        let ev = decode_event(&full).unwrap();
        assert_eq!(
            ev,
            Event::ChannelHangupRequest {
                channel: channel(),
                cause: Some(16),
                soft: true
            }
        );
        assert_eq!(
            (ev.kind(), ev.channel_id(), ev.bridge_id()),
            ("ChannelHangupRequest", Some("1736936493.12"), None)
        );

        let bare = event_json(
            "ChannelHangupRequest",
            &format!(r#", "channel": {CHANNEL}"#),
        );
        assert_eq!(
            decode_event(&bare).unwrap(),
            Event::ChannelHangupRequest {
                channel: channel(),
                cause: None,
                soft: false
            }
        );
    }

    #[test]
    fn channel_state_change() {
        let ev = decode_event(&event_json(
            "ChannelStateChange",
            &format!(r#", "channel": {CHANNEL}"#),
        ))
        .unwrap();
        assert_eq!(ev, Event::ChannelStateChange { channel: channel() });
        assert_eq!(
            (ev.kind(), ev.channel_id(), ev.bridge_id()),
            ("ChannelStateChange", Some("1736936493.12"), None)
        );
    }

    #[test]
    fn channel_entered_and_left_bridge() {
        let extra = format!(r#", "bridge": {BRIDGE}, "channel": {CHANNEL}"#);
        let entered = decode_event(&event_json("ChannelEnteredBridge", &extra)).unwrap();
        assert_eq!(
            entered,
            Event::ChannelEnteredBridge {
                bridge: bridge(),
                channel: channel()
            }
        );
        assert_eq!(entered.kind(), "ChannelEnteredBridge");
        assert_eq!(entered.channel_id(), Some("1736936493.12"));
        assert_eq!(entered.bridge_id(), Some("rtpvisor-br-1736936493.12"));

        let left = decode_event(&event_json("ChannelLeftBridge", &extra)).unwrap();
        assert_eq!(
            left,
            Event::ChannelLeftBridge {
                bridge: bridge(),
                channel: channel()
            }
        );
        assert_eq!(left.kind(), "ChannelLeftBridge");
        assert_eq!(left.channel_id(), Some("1736936493.12"));
        assert_eq!(left.bridge_id(), Some("rtpvisor-br-1736936493.12"));

        let b = bridge();
        assert_eq!(b.technology, "simple_bridge");
        assert_eq!(
            (b.bridge_type.as_str(), b.bridge_class.as_str()),
            ("mixing", "stasis")
        );
        assert_eq!(
            (b.creator.as_str(), b.name.as_str()),
            ("Stasis", "rtpvisor")
        );
        assert_eq!(b.channels.len(), 2);
    }

    #[test]
    fn bridge_created_and_destroyed() {
        let extra = format!(r#", "bridge": {BRIDGE}"#);
        let created = decode_event(&event_json("BridgeCreated", &extra)).unwrap();
        assert_eq!(created, Event::BridgeCreated { bridge: bridge() });
        assert_eq!(
            (created.kind(), created.channel_id()),
            ("BridgeCreated", None)
        );
        assert_eq!(created.bridge_id(), Some("rtpvisor-br-1736936493.12"));

        let destroyed = decode_event(&event_json("BridgeDestroyed", &extra)).unwrap();
        assert_eq!(destroyed, Event::BridgeDestroyed { bridge: bridge() });
        assert_eq!(
            (destroyed.kind(), destroyed.channel_id()),
            ("BridgeDestroyed", None)
        );
        assert_eq!(destroyed.bridge_id(), Some("rtpvisor-br-1736936493.12"));
    }

    #[test]
    fn channel_dtmf_received() {
        let text = event_json(
            "ChannelDtmfReceived",
            &format!(r##", "digit": "#", "duration_ms": 120, "channel": {CHANNEL}"##),
        );
        let ev = decode_event(&text).unwrap();
        assert_eq!(
            ev,
            Event::ChannelDtmfReceived {
                channel: channel(),
                digit: "#".into(),
                duration_ms: 120
            }
        );
        assert_eq!(
            (ev.kind(), ev.channel_id(), ev.bridge_id()),
            ("ChannelDtmfReceived", Some("1736936493.12"), None)
        );
    }

    #[test]
    fn application_replaced() {
        let ev = decode_event(&event_json("ApplicationReplaced", "")).unwrap();
        assert_eq!(
            ev,
            Event::ApplicationReplaced {
                application: "rtpvisor".into()
            }
        );
        assert_eq!(
            (ev.kind(), ev.channel_id(), ev.bridge_id()),
            ("ApplicationReplaced", None, None)
        );
    }

    #[test]
    fn unknown_type_is_tolerated() {
        let text = event_json(
            "ChannelVarset",
            &format!(r#", "variable": "X", "value": "1", "channel": {CHANNEL}"#),
        );
        let ev = decode_event(&text).unwrap();
        assert_eq!(
            ev,
            Event::Unknown {
                kind: "ChannelVarset".into()
            }
        );
        assert_eq!(
            (ev.kind(), ev.channel_id(), ev.bridge_id()),
            ("ChannelVarset", None, None)
        );
        // Even without the envelope: the type alone is enough to skip it safely.
        assert_eq!(
            decode_event(r#"{"type": "Dial"}"#).unwrap(),
            Event::Unknown {
                kind: "Dial".into()
            }
        );
    }

    #[test]
    fn malformed_json_is_an_error() {
        for text in ["", "{", "not json", r#"{"type": "StasisStart","#] {
            assert!(
                matches!(decode_event(text), Err(DecodeError::Json(_))),
                "{text:?}"
            );
        }
        let Err(e) = decode_event("{") else { panic!() };
        assert!(
            e.to_string().starts_with("event is not valid JSON: "),
            "{e}"
        );
    }

    #[test]
    fn missing_type_is_an_error() {
        for text in [
            r#"{"application": "rtpvisor"}"#,
            r#"{"type": null}"#,
            r#"{"type": 7}"#,
            r#"["StasisStart"]"#,
            r#""StasisStart""#,
        ] {
            assert_eq!(decode_event(text), Err(DecodeError::MissingType), "{text}");
        }
        assert_eq!(
            DecodeError::MissingType.to_string(),
            "event has no `type` field"
        );
    }

    #[test]
    fn stasis_start_missing_channel_is_bad_event() {
        let (kind, reason) = bad_event(&event_json("StasisStart", r#", "args": []"#));
        assert_eq!(kind, "StasisStart");
        assert!(reason.contains("channel"), "{reason}");
        let e = DecodeError::BadEvent { kind, reason };
        assert!(e.to_string().starts_with("bad StasisStart event: "), "{e}");
    }

    #[test]
    fn known_types_with_missing_or_wrong_fields_are_bad_events() {
        let cases = [
            // args is required, and must be a list of strings.
            event_json("StasisStart", &format!(r#", "channel": {CHANNEL}"#)),
            event_json(
                "StasisStart",
                &format!(r#", "args": "probe", "channel": {CHANNEL}"#),
            ),
            // application is required where we keep it.
            r#"{"type": "StasisEnd", "channel": {"id": "1", "name": "n", "state": "Up"}}"#.into(),
            r#"{"type": "ApplicationReplaced"}"#.into(),
            // A channel without its required id.
            event_json("StasisEnd", r#", "channel": {"name": "n", "state": "Up"}"#),
            // cause is an int, cause_txt required.
            event_json(
                "ChannelDestroyed",
                &format!(
                    r#", "cause": "16", "cause_txt": "Normal Clearing", "channel": {CHANNEL}"#
                ),
            ),
            event_json(
                "ChannelDestroyed",
                &format!(r#", "cause": 16, "channel": {CHANNEL}"#),
            ),
            event_json(
                "ChannelHangupRequest",
                &format!(r#", "soft": "yes", "channel": {CHANNEL}"#),
            ),
            event_json("ChannelHangupRequest", ""),
            event_json("ChannelStateChange", r#", "channel": null"#),
            event_json(
                "ChannelEnteredBridge",
                &format!(r#", "channel": {CHANNEL}"#),
            ),
            event_json("ChannelEnteredBridge", &format!(r#", "bridge": {BRIDGE}"#)),
            event_json("ChannelLeftBridge", &format!(r#", "bridge": {BRIDGE}"#)),
            event_json("BridgeCreated", ""),
            event_json(
                "BridgeDestroyed",
                r#", "bridge": {"technology": "softmix"}"#,
            ),
            event_json(
                "ChannelDtmfReceived",
                &format!(r#", "digit": "5", "channel": {CHANNEL}"#),
            ),
            event_json(
                "ChannelDtmfReceived",
                &format!(r#", "digit": 5, "duration_ms": 100, "channel": {CHANNEL}"#),
            ),
        ];
        for text in cases {
            let kind = serde_json::from_str::<Value>(&text).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(bad_event(&text).0, kind, "{text}");
        }
    }

    #[test]
    fn sparse_channel_takes_defaults() {
        let c: Channel =
            serde_json::from_str(r#"{"id": "1", "name": "Local/x@y-0001;1", "state": "Up"}"#)
                .unwrap();
        assert_eq!(c.caller, CallerId::default());
        assert_eq!(c.connected, CallerId::default());
        assert_eq!(
            (c.dialplan, c.creationtime, c.language, c.channelvars),
            (None, None, None, None)
        );
        // Older DialplanCEP without app_name/app_data.
        let dp: DialplanCep =
            serde_json::from_str(r#"{"context": "c", "exten": "s", "priority": 1}"#).unwrap();
        assert_eq!((dp.app_name, dp.app_data), (None, None));
        let id: CallerId = serde_json::from_str("{}").unwrap();
        assert_eq!(id, CallerId::default());
    }

    #[test]
    fn unicast_rtp_local_reads_chan_rtp_variables() {
        let both = [
            ("UNICASTRTP_LOCAL_ADDRESS", "127.0.0.1"),
            ("UNICASTRTP_LOCAL_PORT", "16384"),
        ];
        assert_eq!(
            channel_with_vars(&both).unicast_rtp_local(),
            Some("127.0.0.1:16384".parse().unwrap())
        );
        // IPv6 as Asterisk writes it (bare), and bracketed; whitespace tolerated.
        let v6 = [
            ("UNICASTRTP_LOCAL_ADDRESS", "::1"),
            ("UNICASTRTP_LOCAL_PORT", " 16386 "),
        ];
        assert_eq!(
            channel_with_vars(&v6).unicast_rtp_local(),
            Some("[::1]:16386".parse().unwrap())
        );
        let v6b = [
            ("UNICASTRTP_LOCAL_ADDRESS", "[::1]"),
            ("UNICASTRTP_LOCAL_PORT", "16386"),
        ];
        assert_eq!(
            channel_with_vars(&v6b).unicast_rtp_local(),
            Some("[::1]:16386".parse().unwrap())
        );
    }

    #[test]
    fn unicast_rtp_local_is_none_without_usable_variables() {
        assert_eq!(channel().unicast_rtp_local(), None); // no channelvars at all
        let cases: [&[(&str, &str)]; 7] = [
            &[],
            &[("UNICASTRTP_LOCAL_ADDRESS", "127.0.0.1")],
            &[("UNICASTRTP_LOCAL_PORT", "16384")],
            &[
                ("UNICASTRTP_LOCAL_ADDRESS", "127.0.0.1"),
                ("UNICASTRTP_LOCAL_PORT", "http"),
            ],
            &[
                ("UNICASTRTP_LOCAL_ADDRESS", "127.0.0.1"),
                ("UNICASTRTP_LOCAL_PORT", "70000"),
            ],
            &[
                ("UNICASTRTP_LOCAL_ADDRESS", "127.0.0.1"),
                ("UNICASTRTP_LOCAL_PORT", "0"),
            ],
            &[
                ("UNICASTRTP_LOCAL_ADDRESS", "asterisk.local"),
                ("UNICASTRTP_LOCAL_PORT", "16384"),
            ],
        ];
        for vars in cases {
            assert_eq!(
                channel_with_vars(vars).unicast_rtp_local(),
                None,
                "{vars:?}"
            );
        }
    }

    #[test]
    fn is_external_media_by_name_prefix() {
        let mut c = channel();
        for (name, expected) in [
            ("UnicastRTP/127.0.0.1:10000-0x7f3a2c00a1b0", true),
            ("PJSIP/alice-00000006", false),
            ("AudioSocket/127.0.0.1:9092-0x7f3a", false),
            ("unicastrtp/127.0.0.1:10000-0x1", false),
            ("UnicastRTP", false),
        ] {
            c.name = name.into();
            assert_eq!(c.is_external_media(), expected, "{name}");
        }
    }

    #[test]
    fn rest_resources_decode() {
        let app: Application = serde_json::from_str(
            r#"{"name": "rtpvisor", "channel_ids": ["1736936493.12"], "bridge_ids": [],
                "endpoint_ids": [], "device_names": [], "events_allowed": [],
                "events_disallowed": []}"#,
        )
        .unwrap();
        assert_eq!(app.name, "rtpvisor");
        assert_eq!(app.channel_ids, ["1736936493.12"]);
        let sparse: Application = serde_json::from_str(r#"{"name": "x"}"#).unwrap();
        assert_eq!(
            sparse,
            Application {
                name: "x".into(),
                ..Default::default()
            }
        );

        let info: AsteriskInfo = serde_json::from_str(
            r#"{"build": {"os": "Linux"}, "system": {"version": "22.5.2",
                "entity_id": "02:42:ac:11:00:02"}, "config": {}, "status": {}}"#,
        )
        .unwrap();
        let system = info.system.unwrap();
        assert_eq!(
            (system.version.as_str(), system.entity_id.as_str()),
            ("22.5.2", "02:42:ac:11:00:02")
        );
        assert_eq!(
            serde_json::from_str::<AsteriskInfo>("{}").unwrap(),
            AsteriskInfo::default()
        );

        let b: Bridge = serde_json::from_str(r#"{"id": "b1"}"#).unwrap();
        assert_eq!(
            b,
            Bridge {
                id: "b1".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn channel_round_trips_through_serde() {
        let c = channel_with_vars(&[("A", "1")]);
        let back: Channel = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn hangup_reason_strings_are_aris() {
        let all = [
            (HangupReason::Normal, "normal"),
            (HangupReason::Busy, "busy"),
            (HangupReason::Congestion, "congestion"),
            (HangupReason::NoAnswer, "no_answer"),
            (HangupReason::Timeout, "timeout"),
            (HangupReason::Rejected, "rejected"),
            (HangupReason::Unallocated, "unallocated"),
        ];
        for (reason, text) in all {
            assert_eq!(reason.as_str(), text);
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn external_media_query_has_aris_names_and_defaults() {
        let p = ExternalMediaParams::new("rtpvisor", "127.0.0.1:10000", "ulaw");
        let expected = vec![
            ("app", "rtpvisor".to_owned()),
            ("external_host", "127.0.0.1:10000".to_owned()),
            ("format", "ulaw".to_owned()),
            ("encapsulation", "rtp".to_owned()),
            ("transport", "udp".to_owned()),
            ("connection_type", "client".to_owned()),
            ("direction", "both".to_owned()),
        ];
        assert_eq!(p.query(), expected);

        let with_id = ExternalMediaParams {
            channel_id: Some("rtpvisor-em-1736936493.12".into()),
            ..p
        };
        let q = with_id.query();
        assert_eq!(q[..7], expected[..]);
        assert_eq!(q[7], ("channelId", "rtpvisor-em-1736936493.12".to_owned()));
        assert_eq!(q.len(), 8);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value, a few levels deep.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(field(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Field names that events really have, and others.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "channel", "bridge", "id", "name", "state", "args", "application", "timestamp", "caller",
                "number", "channelvars", "cause", "digit", "duration_ms", "replace_channel", "dialplan",
            ])
            .prop_map(String::from),
            "[a-z_]{1,8}",
        ]
    }

    const TYPES: [&str; 14] = [
        "StasisStart", "StasisEnd", "ChannelDestroyed", "ChannelHangupRequest", "ChannelStateChange",
        "ChannelEnteredBridge", "ChannelLeftBridge", "BridgeCreated", "BridgeDestroyed", "ChannelDtmfReceived",
        "ApplicationReplaced", "Dial", "", "stasisstart",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any text: an event or an error, never a panic.
        #[test]
        fn any_text_decodes_or_is_refused(text in "\\PC{0,200}") {
            let _ = decode_event(&text);
        }

        /// JSON objects of every event type with random fields: an event or an error, never a
        /// panic; an unknown type is an `Unknown` event, a known one keeps its kind.
        #[test]
        fn event_shaped_json_decodes_or_is_refused(
            kind in prop::sample::select(TYPES.to_vec()),
            fields in proptest::collection::btree_map(field(), json(), 0..8),
            truncate in any::<prop::sample::Index>(),
        ) {
            let mut object: serde_json::Map<String, Value> = fields.into_iter().collect();
            object.insert("type".into(), Value::from(kind));
            let text = Value::Object(object).to_string();
            match decode_event(&text) {
                Ok(Event::Unknown { .. }) => prop_assert!(!TYPES[..11].contains(&kind)),
                Ok(e) => prop_assert_eq!(e.kind(), kind),
                Err(_) => prop_assert!(TYPES[..11].contains(&kind)),
            }
            // Cut anywhere (on a character boundary): still no panic.
            let mut cut = truncate.index(text.len() + 1);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let _ = decode_event(&text[..cut]);
        }
    }
}
