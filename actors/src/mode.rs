//! Call modes: what rtpvisor does with a call's media, chosen by the first Stasis argument.
//! Pure: parsing and names only.

use std::fmt;
use std::str::FromStr;

/// What a call's ChannelActor does with its media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallMode {
    /// Reflect the caller's RTP back to Asterisk from the call's own leased port, measuring the
    /// inbound stream (jitter, loss, duplicates, reordering, delay against its schedule).
    Echo,
    /// Send our own RTP toward the caller and time each packet that the far end echoes back.
    Probe,
    /// No leased port: Asterisk's externalMedia points at the shared EchoActor (UDP 4000).
    SharedEcho,
}

impl CallMode {
    pub const ALL: [CallMode; 3] = [CallMode::Echo, CallMode::Probe, CallMode::SharedEcho];

    /// The Stasis argument and JSON name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            CallMode::Echo => "echo",
            CallMode::Probe => "probe",
            CallMode::SharedEcho => "shared-echo",
        }
    }

    /// Index into per-mode arrays, in [`CallMode::ALL`] order.
    pub fn index(self) -> usize {
        match self {
            CallMode::Echo => 0,
            CallMode::Probe => 1,
            CallMode::SharedEcho => 2,
        }
    }

    /// True when the call leases a port of its own.
    pub fn leases_port(self) -> bool {
        !matches!(self, CallMode::SharedEcho)
    }
}

impl fmt::Display for CallMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Stasis argument named no mode we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown call mode {0:?} (expected echo, probe or shared-echo)")]
pub struct UnknownMode(pub String);

impl FromStr for CallMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "echo" => Ok(CallMode::Echo),
            "probe" => Ok(CallMode::Probe),
            "shared-echo" | "shared_echo" | "sharedecho" => Ok(CallMode::SharedEcho),
            _ => Err(UnknownMode(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_mode_and_round_trips() {
        for m in CallMode::ALL {
            assert_eq!(m.as_str().parse::<CallMode>(), Ok(m));
            assert_eq!(CallMode::ALL[m.index()], m);
        }
        assert_eq!(" Probe ".parse::<CallMode>(), Ok(CallMode::Probe));
        assert_eq!("shared_echo".parse::<CallMode>(), Ok(CallMode::SharedEcho));
        assert!("loop".parse::<CallMode>().is_err());
        assert!(!CallMode::SharedEcho.leases_port());
        assert!(CallMode::Echo.leases_port());
    }
}
