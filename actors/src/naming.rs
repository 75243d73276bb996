//! Names of what rtpvisor creates in Asterisk: pure, no IO.
//!
//! Every externalMedia channel and bridge is named after the instance that owns it (its Stasis
//! application: two rtpvisor processes on one Asterisk have different apps) and the caller it
//! serves. So events about them are routed to the right call, and a reconciliation touches only
//! its own instance's resources, never another's that happens to share the Asterisk.
//!
//! ```text
//! rtpvisor-em-<len(app)>-<app>-<len(caller)>-<caller>   externalMedia channel
//! rtpvisor-br-<len(app)>-<app>-<len(caller)>-<caller>   mixing bridge
//! ```
//!
//! The lengths make the names unambiguous whatever the app and caller ids contain (dashes
//! included), and make no name a prefix of another: Asterisk 22's channel storage takes a new
//! channel id for "already in use" when an existing channel's id merely starts with it
//! (asterisk/asterisk#1730), so `…-call-2` was refused with HTTP 500 while `…-call-21` existed.
//!
//! A bridge's *name* (not its id) says what the call is ([`call_tag`]): its mode and port.

use crate::mode::CallMode;

/// Prefix of every externalMedia channel id rtpvisor creates.
pub const MEDIA_CHANNEL_PREFIX: &str = "rtpvisor-em-";
/// Prefix of every bridge id rtpvisor creates.
pub const BRIDGE_PREFIX: &str = "rtpvisor-br-";

/// Which kind of resource a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MediaChannel,
    Bridge,
}

/// A name rtpvisor made, taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned<'a> {
    pub kind: Kind,
    /// The Stasis application (the instance) that owns it.
    pub app: &'a str,
    /// The caller's channel id the resource serves.
    pub caller: &'a str,
}

/// The externalMedia channel id of `caller`'s call in `app`.
pub fn external_media_id(app: &str, caller: &str) -> String {
    name(MEDIA_CHANNEL_PREFIX, app, caller)
}

/// The bridge id of `caller`'s call in `app`.
pub fn bridge_id(app: &str, caller: &str) -> String {
    name(BRIDGE_PREFIX, app, caller)
}

fn name(prefix: &str, app: &str, caller: &str) -> String {
    format!("{prefix}{}-{app}-{}-{caller}", app.len(), caller.len())
}

/// Takes a name made by [`external_media_id`] or [`bridge_id`] apart; None for any other id
/// (another application's, Asterisk's own, a caller's).
pub fn parse(id: &str) -> Option<Owned<'_>> {
    let (kind, rest) = if let Some(r) = id.strip_prefix(MEDIA_CHANNEL_PREFIX) {
        (Kind::MediaChannel, r)
    } else if let Some(r) = id.strip_prefix(BRIDGE_PREFIX) {
        (Kind::Bridge, r)
    } else {
        return None;
    };
    let (app, rest) = counted(rest)?;
    let rest = rest.strip_prefix('-')?;
    let (caller, rest) = counted(rest)?;
    rest.is_empty().then_some(Owned { kind, app, caller })
}

/// `<len>-<len bytes>...` -> (the bytes, what follows).
fn counted(s: &str) -> Option<(&str, &str)> {
    let (len, rest) = s.split_once('-')?;
    if len.is_empty() || len.len() > 4 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: usize = len.parse().ok()?;
    (rest.len() >= len && rest.is_char_boundary(len)).then(|| rest.split_at(len))
}

/// True when `id` names a resource of `kind` that `app` owns.
pub fn is_owned_by(id: &str, app: &str, kind: Kind) -> bool {
    parse(id).is_some_and(|o| o.app == app && o.kind == kind)
}

/// Prefix of the name rtpvisor gives its bridges ([`call_tag`]).
pub const CALL_TAG_PREFIX: &str = "rtpvisor;";

/// What a call is, written into its bridge's name when it is created, so that a later process
/// of the same instance can take the call over from what Asterisk lists alone (`GET
/// /bridges`): the mode, and the leased port. The port is needed there because the
/// externalMedia channel's name carries it only when `external_host` is an IP literal
/// (`UnicastRTP/127.0.0.1:10005-0x...`): with a host name Asterisk names it
/// `UnicastRTP/rtpvisor-0x...` (Asterisk 22.10, measured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTag {
    pub mode: CallMode,
    /// The leased port (None: shared-echo, no port of ours).
    pub port: Option<u16>,
}

/// The bridge name of a call: `rtpvisor;mode=probe;port=10005` (no `port` for shared-echo).
pub fn call_tag(tag: CallTag) -> String {
    match tag.port {
        Some(p) => format!("{CALL_TAG_PREFIX}mode={};port={p}", tag.mode),
        None => format!("{CALL_TAG_PREFIX}mode={}", tag.mode),
    }
}

/// Reads a bridge name made by [`call_tag`]; None for any other name. Unknown keys are
/// skipped (a later version may add some); a repeated or bad known key is no tag.
pub fn parse_call_tag(name: &str) -> Option<CallTag> {
    let rest = name.strip_prefix(CALL_TAG_PREFIX)?;
    let (mut mode, mut port) = (None, None);
    for field in rest.split(';') {
        let (k, v) = field.split_once('=')?;
        match k {
            "mode" if mode.is_none() => mode = Some(v.parse::<CallMode>().ok()?),
            "port" if port.is_none() => port = Some(v.parse::<u16>().ok().filter(|p| *p != 0)?),
            "mode" | "port" => return None,
            _ => {}
        }
    }
    let mode = mode?;
    (mode.leases_port() == port.is_some()).then_some(CallTag { mode, port })
}

/// Where an externalMedia channel sends its media, from the channel's name as Asterisk 22 makes
/// it: `UnicastRTP/<external_host>-0x<address>`, where `external_host` lost its port when it was
/// a host name. None for any other channel.
pub fn media_target(channel_name: &str) -> Option<&str> {
    let rest = channel_name.strip_prefix("UnicastRTP/")?;
    let (target, suffix) = rest.rsplit_once('-')?;
    (suffix.starts_with("0x") && !target.is_empty()).then_some(target)
}

/// `host:port` as ARI's `external_host` wants it; an IPv6 literal gets brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_brackets_ipv6_only() {
        assert_eq!(host_port("127.0.0.1", 10000), "127.0.0.1:10000");
        assert_eq!(host_port("rtpvisor", 4000), "rtpvisor:4000");
        assert_eq!(host_port("::1", 10000), "[::1]:10000");
        assert_eq!(host_port("[::1]", 10000), "[::1]:10000");
    }

    #[test]
    fn names_carry_app_and_caller() {
        assert_eq!(external_media_id("rtpvisor", "abc"), "rtpvisor-em-8-rtpvisor-3-abc");
        assert_eq!(bridge_id("b", "1700000000.12"), "rtpvisor-br-1-b-13-1700000000.12");
        let o = parse("rtpvisor-em-8-rtpvisor-3-abc").unwrap();
        assert_eq!(o, Owned { kind: Kind::MediaChannel, app: "rtpvisor", caller: "abc" });
        assert!(is_owned_by(&bridge_id("a-b", "x"), "a-b", Kind::Bridge));
        assert!(!is_owned_by(&bridge_id("a-b", "x"), "a", Kind::Bridge));
        assert!(!is_owned_by(&bridge_id("a", "x"), "a", Kind::MediaChannel));
    }

    #[test]
    fn other_ids_are_not_ours() {
        for id in [
            "1700000000.12",
            "rtpvisor-em-3-abc",          // the unscoped names of earlier versions
            "rtpvisor-br-abc",
            "rtpvisor-em-8-rtpvisor-3-ab", // caller length does not match
            "rtpvisor-em-8-rtpvisor-3-abcd",
            "rtpvisor-em-x-a-1-b",
            "rtpvisor-em--a-1-b",
            "rtpvisor-em-99999-a-1-b",
            "rtpvisor-em-1-a1-b",
            "",
        ] {
            assert_eq!(parse(id), None, "{id}");
        }
    }

    #[test]
    fn names_round_trip_and_none_is_a_prefix_of_another() {
        let apps = ["rtpvisor", "rtpvisor-b", "a", "a-1", "1", ""];
        let callers = ["call-2", "call-21", "call-2-1", "1", "12", "1-", "2-1", "", "x;2", "x;21", "10-abcdefghij"];
        let mut all = Vec::new();
        for app in apps {
            for caller in callers {
                for (kind, id) in [(Kind::MediaChannel, external_media_id(app, caller)), (Kind::Bridge, bridge_id(app, caller))] {
                    assert_eq!(parse(&id), Some(Owned { kind, app, caller }), "{id}");
                    all.push(id);
                }
            }
        }
        for a in &all {
            for b in &all {
                assert!(a == b || !b.starts_with(a.as_str()), "{a} is a prefix of {b}");
            }
        }
    }

    #[test]
    fn call_tags_round_trip_and_reject_what_they_did_not_write() {
        for tag in [
            CallTag { mode: CallMode::Probe, port: Some(10005) },
            CallTag { mode: CallMode::Echo, port: Some(65535) },
            CallTag { mode: CallMode::SharedEcho, port: None },
        ] {
            assert_eq!(parse_call_tag(&call_tag(tag)), Some(tag), "{}", call_tag(tag));
        }
        assert_eq!(call_tag(CallTag { mode: CallMode::Probe, port: Some(10005) }), "rtpvisor;mode=probe;port=10005");
        assert_eq!(
            parse_call_tag("rtpvisor;transport=rtp;mode=echo;port=7"),
            Some(CallTag { mode: CallMode::Echo, port: Some(7) }),
            "unknown keys are skipped"
        );
        for name in [
            "rtpvisor-br-8-rtpvisor-3-abc", // the id-as-name of earlier versions
            "rtpvisor;mode=echo",           // echo needs its port
            "rtpvisor;mode=shared-echo;port=4000",
            "rtpvisor;mode=echo;port=0",
            "rtpvisor;mode=echo;port=70000",
            "rtpvisor;mode=talk;port=7",
            "rtpvisor;mode=echo;mode=probe;port=7",
            "rtpvisor;mode=echo;port=7;port=8",
            "rtpvisor;mode=echo;port",
            "mode=echo;port=7",
            "",
        ] {
            assert_eq!(parse_call_tag(name), None, "{name}");
        }
    }

    #[test]
    fn media_targets_come_from_unicast_rtp_names() {
        assert_eq!(media_target("UnicastRTP/127.0.0.1:10005-0x557147d4bb30"), Some("127.0.0.1:10005"));
        assert_eq!(media_target("UnicastRTP/rtpvisor-0x7fe82c2429f0"), Some("rtpvisor"));
        assert_eq!(media_target("UnicastRTP/rtp-visor-1-0x7fe82c2429f0"), Some("rtp-visor-1"));
        assert_eq!(media_target("UnicastRTP/[::1]:10007-0x7fe840005280"), Some("[::1]:10007"));
        for name in ["PJSIP/caller-00000001", "UnicastRTP/-0x1", "UnicastRTP/127.0.0.1:10005", "Local/x@y-0001;1"] {
            assert_eq!(media_target(name), None, "{name}");
        }
    }
}
