//! What a reconciliation with Asterisk must end, decided from Asterisk's state and what the
//! service knows: pure, no IO. The Supervisor fetches the state (our application, every
//! channel and bridge), asks [`plan`], and carries the plan out.

use std::collections::HashSet;

use crate::actors::channel::{is_our_channel_id, BRIDGE_PREFIX};
use crate::ari::model::{Application, Bridge, Channel};

/// The outcome of [`plan`]: ids, each listed once, in a stable order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Our live calls (set up, not setting up) whose caller Asterisk no longer lists: end them.
    pub vanished_calls: Vec<String>,
    /// Our externalMedia channels that no live call owns: hang them up.
    pub media_orphans: Vec<String>,
    /// Our bridges that no live call owns: destroy them.
    pub bridge_orphans: Vec<String>,
    /// Channels of our application in Stasis that are no call of ours: hang them up if they
    /// are still no call after a grace period (their StasisStart may be on its way).
    pub caller_candidates: Vec<String>,
}

/// A live call as the plan needs it.
#[derive(Debug, Clone, Copy)]
pub struct LiveCall<'a> {
    pub caller_id: &'a str,
    /// Still setting up: its caller may be too new to be listed; never counted as vanished.
    pub setting_up: bool,
}

/// Decides what to end. `known(id)`: the id is a live call's caller, externalMedia channel or
/// bridge.
pub fn plan<'a>(
    app: &Application,
    channels: &[Channel],
    bridges: &[Bridge],
    live: impl IntoIterator<Item = LiveCall<'a>>,
    known: impl Fn(&str) -> bool,
) -> Plan {
    let listed: HashSet<&str> = channels.iter().map(|c| c.id.as_str()).collect();
    let mut p = Plan::default();
    for call in live {
        if !call.setting_up && !listed.contains(call.caller_id) {
            p.vanished_calls.push(call.caller_id.to_string());
        }
    }
    // A channel of our app runs Stasis (a caller) or not: the far half of a Local channel
    // originated into the app is subscribed to it too but runs dialplan, and ends with its
    // Stasis half. Only channels in Stasis count as orphan callers.
    let in_stasis = |id: &str| {
        channels.iter().find(|c| c.id == id).is_none_or(|c| {
            c.dialplan.as_ref().and_then(|d| d.app_name.as_deref()).is_none_or(|a| a == "Stasis")
        })
    };
    for id in app.channel_ids.iter().chain(channels.iter().map(|c| &c.id)) {
        if known(id) {
            continue;
        }
        if is_our_channel_id(id) {
            p.media_orphans.push(id.clone());
        } else if app.channel_ids.contains(id) && in_stasis(id) {
            p.caller_candidates.push(id.clone());
        }
    }
    p.bridge_orphans = app
        .bridge_ids
        .iter()
        .chain(bridges.iter().map(|b| &b.id))
        .filter(|id| id.starts_with(BRIDGE_PREFIX) && !known(id))
        .cloned()
        .collect();
    for v in [&mut p.vanished_calls, &mut p.media_orphans, &mut p.bridge_orphans, &mut p.caller_candidates] {
        v.sort();
        v.dedup();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn channel(id: &str, app_name: &str) -> Channel {
        serde_json::from_value(json!({
            "id": id, "name": format!("PJSIP/{id}"), "state": "Up",
            "dialplan": {"context": "x", "exten": "s", "priority": 1, "app_name": app_name, "app_data": ""}
        }))
        .unwrap()
    }
    fn bridge(id: &str) -> Bridge {
        serde_json::from_value(json!({"id": id})).unwrap()
    }
    fn app(channels: &[&str], bridges: &[&str]) -> Application {
        serde_json::from_value(json!({"name": "rtpvisor", "channel_ids": channels, "bridge_ids": bridges})).unwrap()
    }

    #[test]
    fn a_clean_state_needs_nothing() {
        let chans = [channel("a", "Stasis"), channel("rtpvisor-em-1-a", "")];
        let p = plan(
            &app(&["a", "rtpvisor-em-1-a"], &["rtpvisor-br-a"]),
            &chans,
            &[bridge("rtpvisor-br-a")],
            [LiveCall { caller_id: "a", setting_up: false }],
            |id| ["a", "rtpvisor-em-1-a", "rtpvisor-br-a"].contains(&id),
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn after_a_crash_everything_of_ours_is_an_orphan_once() {
        // A restarted service knows nothing; Asterisk lists the old calls' resources, in
        // both the app's list and the global one.
        let chans = [
            channel("c1", "Stasis"),
            channel("c1-far", "Echo"),
            channel("rtpvisor-em-2-c1", ""),
            channel("someone-else", "Dial"),
        ];
        let p = plan(
            &app(&["c1", "c1-far", "rtpvisor-em-2-c1"], &["rtpvisor-br-c1"]),
            &chans,
            &[bridge("rtpvisor-br-c1"), bridge("not-ours")],
            [],
            |_| false,
        );
        assert_eq!(p.media_orphans, ["rtpvisor-em-2-c1"]);
        assert_eq!(p.bridge_orphans, ["rtpvisor-br-c1"]);
        assert_eq!(p.caller_candidates, ["c1"], "the Local far half runs dialplan, not Stasis");
        assert!(p.vanished_calls.is_empty());
    }

    #[test]
    fn a_call_whose_caller_is_gone_has_vanished_unless_it_is_still_setting_up() {
        let p = plan(
            &app(&[], &[]),
            &[],
            &[],
            [LiveCall { caller_id: "gone", setting_up: false }, LiveCall { caller_id: "new", setting_up: true }],
            |id| id == "gone" || id == "new",
        );
        assert_eq!(p.vanished_calls, ["gone"]);
    }

    #[test]
    fn an_app_channel_asterisk_does_not_list_is_still_a_candidate() {
        // The app lists it, the channel list (fetched a moment later) no longer does: it may
        // be a caller; the grace period and the second look decide.
        let p = plan(&app(&["x"], &[]), &[], &[], [], |_| false);
        assert_eq!(p.caller_candidates, ["x"]);
    }
}
