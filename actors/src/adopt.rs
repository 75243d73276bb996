//! Which live calls a (re)connected rtpvisor finds in Asterisk and takes over: pure, no IO.
//!
//! Everything a call is made of stays in Asterisk when the process that served it dies (kill -9,
//! a panic escalation, a replaced container): the caller in our Stasis app, our externalMedia
//! channel, our bridge with both in it. Only our side is gone (the socket, the stream), and the
//! port is free again the moment the process died. So a new process of the same instance can
//! carry the call on instead of hanging it up: [`survey`] says which calls are whole and
//! consistent, the Supervisor adopts those (a `ChannelActor` that rebuilds our side, see
//! [`crate::call::CallProcedure::adopt`]) before the reconciliation cleans the rest.
//!
//! A call is adopted when all of this holds, and left to the reconciliation (which ends it as
//! before) when anything is missing or does not fit:
//! - our bridge for it exists (named after the app and the caller, [`crate::naming`]) and its
//!   name is a call tag (mode, port: [`naming::call_tag`]);
//! - the caller is a channel of our app, listed, in `Stasis`, and in that bridge;
//! - our externalMedia channel for it exists, is in that bridge, and sends where this process
//!   would send the call's media: the media host and the tag's port (a port of our range,
//!   claimed by no other call), or the shared echo for shared-echo calls.
//!
//! Nothing known to the running process is surveyed (its own calls), nor anything Asterisk
//! reported ended while the lists were being read.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::ari::model::{Application, Bridge, Channel};
use crate::mode::CallMode;
use crate::naming::{self, host_port, Kind};
use crate::ports::PortRange;

/// Where this process sends media: what an adoptable call's externalMedia channel must match.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// Our Stasis application (the instance).
    pub app: &'a str,
    /// The host Asterisk sends a call's RTP to (`media.host`).
    pub media_host: &'a str,
    /// Our port range: an adopted call's port must be in it.
    pub ports: PortRange,
    /// Where Asterisk reaches the shared echo, host and port.
    pub echo_host: &'a str,
    pub echo_port: u16,
}

/// A call to adopt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub caller_id: String,
    pub caller_name: String,
    pub mode: CallMode,
    /// Its leased port (None: shared-echo).
    pub port: Option<u16>,
}

/// The outcome of [`survey`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Whole, consistent calls: adopt them. Ordered by caller id.
    pub adopt: Vec<Found>,
    /// Calls of ours that are not adopted, with why (for the log): the reconciliation cleans
    /// them.
    pub skipped: Vec<(String, String)>,
}

/// Surveys Asterisk's lists for calls of `expect.app` to adopt. `known(id)`: a caller,
/// externalMedia channel or bridge of a call the process already has. `gone(id)`: Asterisk
/// reported it ended (hang-up, left the bridge, destroyed) since the lists were requested.
pub fn survey(
    app: &Application,
    channels: &[Channel],
    bridges: &[Bridge],
    expect: &Expect<'_>,
    known: impl Fn(&str) -> bool,
    gone: impl Fn(&str) -> bool,
) -> Survey {
    let in_app: HashSet<&str> = app.channel_ids.iter().map(String::as_str).collect();
    let listed: HashMap<&str, &Channel> = channels.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut s = Survey::default();
    let mut ports_claimed: HashSet<u16> = HashSet::new();
    let mut ours: Vec<(&str, &Bridge)> = bridges
        .iter()
        .filter_map(|b| {
            let o = naming::parse(&b.id)?;
            (o.kind == Kind::Bridge && o.app == expect.app).then_some((o.caller, b))
        })
        .collect();
    ours.sort_by_key(|(caller, _)| *caller);
    for (caller_id, bridge) in ours {
        let em_id = naming::external_media_id(expect.app, caller_id);
        if [caller_id, em_id.as_str(), bridge.id.as_str()].iter().any(|id| known(id)) {
            continue;
        }
        let verdict = (|| {
            if [caller_id, em_id.as_str(), bridge.id.as_str()].iter().any(|id| gone(id)) {
                return Err("Asterisk ended part of it while it was being read".to_string());
            }
            let tag = naming::parse_call_tag(&bridge.name)
                .ok_or_else(|| format!("its bridge's name {:?} says no mode and port", bridge.name))?;
            let caller = listed.get(caller_id).ok_or("its caller is gone")?;
            if !in_app.contains(caller_id) {
                return Err("its caller is not in our application".into());
            }
            let app_name = caller.dialplan.as_ref().and_then(|d| d.app_name.as_deref());
            if app_name != Some("Stasis") {
                return Err(format!("its caller runs {} instead of Stasis", app_name.unwrap_or("nothing")));
            }
            let em = listed.get(em_id.as_str()).ok_or("its externalMedia channel is gone")?;
            for (id, what) in [(caller_id, "caller"), (em_id.as_str(), "externalMedia channel")] {
                if !bridge.channels.iter().any(|c| c == id) {
                    return Err(format!("its {what} is not in its bridge"));
                }
            }
            let target = naming::media_target(&em.name)
                .ok_or_else(|| format!("its externalMedia channel {:?} is no RTP channel", em.name))?;
            match tag.port {
                None if sends_to(target, expect.echo_host, expect.echo_port) => {}
                None => return Err(format!("it sends to {target}, not to the shared echo")),
                Some(p) if !expect.ports.contains(p) => return Err(format!("its port {p} is outside {}", expect.ports)),
                Some(p) if !sends_to(target, expect.media_host, p) => {
                    return Err(format!("it sends to {target}, not to {}", host_port(expect.media_host, p)))
                }
                Some(p) if !ports_claimed.insert(p) => return Err(format!("its port {p} is claimed by another call")),
                Some(_) => {}
            }
            Ok(Found { caller_id: caller_id.to_string(), caller_name: caller.name.clone(), mode: tag.mode, port: tag.port })
        })();
        match verdict {
            Ok(found) => s.adopt.push(found),
            Err(why) => s.skipped.push((caller_id.to_string(), why)),
        }
    }
    s
}

/// Whether an externalMedia channel's media target (from its name) is `host:port`: Asterisk
/// keeps the port in the name for an IP literal only.
fn sends_to(target: &str, host: &str, port: u16) -> bool {
    let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok();
    if literal {
        target == host_port(host, port)
    } else {
        target == host
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::{bridge_id, call_tag, external_media_id, CallTag};
    use serde_json::json;

    const APP: &str = "rtpvisor";

    fn expect() -> Expect<'static> {
        Expect { app: APP, media_host: "127.0.0.1", ports: "10000-10100".parse().unwrap(), echo_host: "127.0.0.1", echo_port: 4000 }
    }

    fn channel(id: &str, name: &str, app_name: &str) -> Channel {
        serde_json::from_value(json!({
            "id": id, "name": name, "state": "Up",
            "dialplan": {"context": "x", "exten": "s", "priority": 1, "app_name": app_name, "app_data": "rtpvisor,probe"}
        }))
        .unwrap()
    }

    fn bridge(id: &str, name: &str, members: &[&str]) -> Bridge {
        serde_json::from_value(json!({"id": id, "name": name, "channels": members})).unwrap()
    }

    /// Asterisk's lists for whole calls: (caller id, mode, port, media target).
    struct World {
        app: Application,
        channels: Vec<Channel>,
        bridges: Vec<Bridge>,
    }

    fn world(calls: &[(&str, CallMode, Option<u16>, &str)]) -> World {
        let mut ids = Vec::new();
        let (mut channels, mut bridges) = (Vec::new(), Vec::new());
        for (caller, mode, port, target) in calls {
            let em = external_media_id(APP, caller);
            channels.push(channel(caller, &format!("PJSIP/{caller}"), "Stasis"));
            channels.push(channel(&em, &format!("UnicastRTP/{target}-0x7f00"), "Stasis"));
            let br = bridge_id(APP, caller);
            bridges.push(bridge(&br, &call_tag(CallTag { mode: *mode, port: *port }), &[caller, &em]));
            ids.push(caller.to_string());
            ids.push(em);
        }
        let app = serde_json::from_value(json!({"name": APP, "channel_ids": ids})).unwrap();
        World { app, channels, bridges }
    }

    fn run(w: &World) -> Survey {
        survey(&w.app, &w.channels, &w.bridges, &expect(), |_| false, |_| false)
    }

    #[test]
    fn whole_calls_of_every_mode_are_adopted() {
        let w = world(&[
            ("c1", CallMode::Probe, Some(10005), "127.0.0.1:10005"),
            ("c2", CallMode::Echo, Some(10006), "127.0.0.1:10006"),
            ("c3", CallMode::SharedEcho, None, "127.0.0.1:4000"),
        ]);
        let s = run(&w);
        assert_eq!(s.skipped, vec![]);
        assert_eq!(
            s.adopt,
            vec![
                Found { caller_id: "c1".into(), caller_name: "PJSIP/c1".into(), mode: CallMode::Probe, port: Some(10005) },
                Found { caller_id: "c2".into(), caller_name: "PJSIP/c2".into(), mode: CallMode::Echo, port: Some(10006) },
                Found { caller_id: "c3".into(), caller_name: "PJSIP/c3".into(), mode: CallMode::SharedEcho, port: None },
            ]
        );
    }

    #[test]
    fn a_host_name_target_carries_no_port_and_still_matches() {
        let w = world(&[("c1", CallMode::Echo, Some(10005), "rtpvisor"), ("c2", CallMode::SharedEcho, None, "rtpvisor")]);
        let e = Expect { media_host: "rtpvisor", echo_host: "rtpvisor", ..expect() };
        let s = survey(&w.app, &w.channels, &w.bridges, &e, |_| false, |_| false);
        assert_eq!(s.adopt.len(), 2, "{s:?}");
        let e = Expect { media_host: "other", ..e };
        let s = survey(&w.app, &w.channels, &w.bridges, &e, |_| false, |_| false);
        assert_eq!(s.adopt.len(), 1, "only the shared-echo call still fits: {s:?}");
        assert!(s.skipped[0].1.contains("sends to rtpvisor, not to other:10005"), "{s:?}");
    }

    #[test]
    fn an_ipv6_media_host_matches_its_bracketed_target() {
        let w = world(&[("c1", CallMode::Probe, Some(10005), "[::1]:10005")]);
        let e = Expect { media_host: "::1", ..expect() };
        assert_eq!(survey(&w.app, &w.channels, &w.bridges, &e, |_| false, |_| false).adopt.len(), 1);
    }

    /// One call made inconsistent by `break_it`: not adopted, with a reason containing `why`.
    fn skipped_because(break_it: impl FnOnce(&mut World), why: &str) {
        let mut w = world(&[("c1", CallMode::Probe, Some(10005), "127.0.0.1:10005")]);
        break_it(&mut w);
        let s = run(&w);
        assert_eq!(s.adopt, vec![], "{why}");
        assert_eq!(s.skipped.len(), 1, "{why}: {s:?}");
        assert!(s.skipped[0].1.contains(why), "{why}: {s:?}");
    }

    #[test]
    fn anything_missing_or_out_of_place_is_left_to_the_reconciliation() {
        skipped_because(|w| w.channels.retain(|c| c.id != "c1"), "caller is gone");
        skipped_because(|w| w.channels.retain(|c| c.id == "c1"), "externalMedia channel is gone");
        skipped_because(|w| w.app.channel_ids.retain(|c| c != "c1"), "not in our application");
        skipped_because(|w| w.channels[0] = channel("c1", "PJSIP/c1", "Echo"), "runs Echo instead of Stasis");
        skipped_because(|w| w.bridges[0].channels.retain(|c| c != "c1"), "caller is not in its bridge");
        skipped_because(|w| w.bridges[0].channels.truncate(1), "externalMedia channel is not in its bridge");
        skipped_because(|w| w.bridges[0].name = w.bridges[0].id.clone(), "says no mode and port");
        skipped_because(
            |w| w.bridges[0].name = call_tag(CallTag { mode: CallMode::Probe, port: Some(20000) }),
            "outside 10000-10100",
        );
        skipped_because(|w| w.channels[1].name = "UnicastRTP/127.0.0.1:10006-0x1".into(), "not to 127.0.0.1:10005");
        skipped_because(|w| w.channels[1].name = "UnicastRTP/10.0.0.9:10005-0x1".into(), "sends to 10.0.0.9:10005");
        skipped_because(|w| w.channels[1].name = "PJSIP/x-1".into(), "no RTP channel");
        skipped_because(
            |w| w.bridges[0].name = call_tag(CallTag { mode: CallMode::SharedEcho, port: None }),
            "not to the shared echo",
        );
    }

    #[test]
    fn a_port_claimed_twice_is_adopted_once() {
        let w = world(&[("c1", CallMode::Echo, Some(10005), "127.0.0.1:10005"), ("c2", CallMode::Echo, Some(10005), "127.0.0.1:10005")]);
        let s = run(&w);
        assert_eq!(s.adopt.len(), 1);
        assert_eq!(s.skipped, vec![("c2".to_string(), "its port 10005 is claimed by another call".to_string())]);
    }

    #[test]
    fn known_calls_are_not_surveyed_and_gone_ones_are_skipped() {
        let w = world(&[("c1", CallMode::Echo, Some(10005), "127.0.0.1:10005"), ("c2", CallMode::Echo, Some(10006), "127.0.0.1:10006")]);
        let known = |id: &str| id == "c1";
        let s = survey(&w.app, &w.channels, &w.bridges, &expect(), known, |_| false);
        assert_eq!((s.adopt.len(), s.skipped.len()), (1, 0));
        assert_eq!(s.adopt[0].caller_id, "c2");
        let gone_bridge = bridge_id(APP, "c2");
        let s = survey(&w.app, &w.channels, &w.bridges, &expect(), known, |id| id == gone_bridge);
        assert_eq!(s.adopt, vec![]);
        assert!(s.skipped[0].1.contains("ended part of it"), "{s:?}");
    }

    #[test]
    fn another_instances_calls_are_never_surveyed() {
        let mut w = world(&[("c1", CallMode::Echo, Some(10005), "127.0.0.1:10005")]);
        let e = Expect { app: "rtpvisor-b", ..expect() };
        assert_eq!(survey(&w.app, &w.channels, &w.bridges, &e, |_| false, |_| false), Survey::default());
        w.bridges[0].id = bridge_id("rtpvisor-b", "c1");
        assert_eq!(run(&w), Survey::default(), "a bridge of app rtpvisor-b is not ours");
    }
}
