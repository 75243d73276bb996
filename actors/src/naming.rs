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
}
