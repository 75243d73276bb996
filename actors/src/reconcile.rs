//! What a reconciliation with Asterisk must end, decided from Asterisk's state and what the
//! service knows: pure, no IO. The Supervisor fetches the state (our application, every
//! channel and bridge), asks [`plan`], and carries the plan out.
//!
//! Scope: a reconciliation touches only what this instance owns: channels of its own Stasis
//! application, and externalMedia channels and bridges whose names carry its application
//! ([`crate::naming`]). Another rtpvisor on the same Asterisk (another app) and every other
//! channel or bridge are only read, never ended.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::adopt::{Expect, Found, Survey};
use crate::ari::model::{Application, Bridge, Channel};
use crate::naming::{self, Kind};

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
    /// The call began after the reconciliation started fetching Asterisk's state: the lists
    /// may predate its caller, so it is never counted as vanished.
    pub began_after_fetch: bool,
}

/// Decides what to end for the instance whose Stasis application is `app`. `known(id)`: the
/// id is a live call's caller, externalMedia channel or bridge.
pub fn plan<'a>(
    app: &Application,
    channels: &[Channel],
    bridges: &[Bridge],
    live: impl IntoIterator<Item = LiveCall<'a>>,
    known: impl Fn(&str) -> bool,
) -> Plan {
    let listed: HashMap<&str, &Channel> = channels.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut p = Plan::default();
    for call in live {
        if !call.setting_up && !call.began_after_fetch && !listed.contains_key(call.caller_id) {
            p.vanished_calls.push(call.caller_id.to_string());
        }
    }
    // A channel of our app runs Stasis (a caller) or not: the far half of a Local channel
    // originated into the app is subscribed to it too but runs dialplan, and ends with its
    // Stasis half. Only channels in Stasis count as orphan callers.
    let in_stasis = |id: &str| {
        listed.get(id).is_none_or(|c| {
            c.dialplan.as_ref().and_then(|d| d.app_name.as_deref()).is_none_or(|a| a == "Stasis")
        })
    };
    let ours = |id: &str, kind| naming::is_owned_by(id, &app.name, kind);
    let app_channels: HashSet<&str> = app.channel_ids.iter().map(String::as_str).collect();
    for id in app.channel_ids.iter().chain(channels.iter().map(|c| &c.id)) {
        if known(id) {
            continue;
        }
        if ours(id, Kind::MediaChannel) {
            p.media_orphans.push(id.clone());
        } else if app_channels.contains(id.as_str()) && naming::parse(id).is_none() && in_stasis(id) {
            p.caller_candidates.push(id.clone());
        }
    }
    p.bridge_orphans = app
        .bridge_ids
        .iter()
        .chain(bridges.iter().map(|b| &b.id))
        .filter(|id| ours(id, Kind::Bridge) && !known(id))
        .cloned()
        .collect();
    for v in [&mut p.vanished_calls, &mut p.media_orphans, &mut p.bridge_orphans, &mut p.caller_candidates] {
        v.sort();
        v.dedup();
    }
    p
}

/// What one reconciliation found and did.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct ReconcileReport {
    /// Channels in our app that no live call owns (callers left by a crash or missed events,
    /// and the far halves of Local channels originated into the app): hung up.
    pub orphan_app_channels: usize,
    /// Our externalMedia channels (`rtpvisor-em-*`) no live call owns: hung up.
    pub orphan_media_channels: usize,
    /// Our bridges (`rtpvisor-br-*`) no live call owns: destroyed.
    pub orphan_bridges: usize,
    /// Live calls whose caller Asterisk no longer has: ended.
    pub vanished_calls: usize,
    /// Calls found whole in Asterisk that no process of ours served: taken over
    /// ([`crate::adopt`]).
    pub adopted_calls: usize,
    /// Deletes that failed (retried at the next reconciliation).
    pub errors: usize,
    /// Reading Asterisk's state (our app, every channel, every bridge).
    pub fetch_ms: u64,
    /// Channels and bridges Asterisk listed (ours and everyone else's).
    pub listed: usize,
    /// The whole run, the grace for unknown callers included.
    pub took_ms: u64,
}

/// When reconciliations run: at most one at a time, and at most one waiting however many are
/// asked for meanwhile (one run after the current one serves them all). Delayed requests (after
/// a failed setup, whose late requests Asterisk may still execute) share one timer: when it
/// fires, one run serves every request due by then, and the timer is armed again for the
/// latest request made meanwhile if that is due later. Pure: the Supervisor does the IO and
/// the timers.
#[derive(Debug, Default)]
pub struct Gate {
    running: bool,
    waiting: bool,
    /// The latest due time asked for and not yet served.
    due: Option<Instant>,
    timer: bool,
}

impl Gate {
    /// A reconciliation is wanted now: true when it may start (none runs), false when it
    /// waits for the running one.
    pub fn request(&mut self) -> bool {
        if self.running {
            self.waiting = true;
            false
        } else {
            self.running = true;
            true
        }
    }

    /// The running reconciliation finished: true when the waiting one starts now.
    pub fn finished(&mut self) -> bool {
        self.running = false;
        if std::mem::take(&mut self.waiting) {
            self.running = true;
            true
        } else {
            false
        }
    }

    /// A reconciliation is wanted at `due` or later: `Some(t)` asks for a timer at `t` (none
    /// is armed); `None` means the armed timer will see to it.
    pub fn request_at(&mut self, due: Instant) -> Option<Instant> {
        self.due = Some(self.due.map_or(due, |d| d.max(due)));
        if self.timer {
            None
        } else {
            self.timer = true;
            Some(due)
        }
    }

    /// The timer fired at `now`: a reconciliation is wanted now (pass it to
    /// [`Gate::request`]); `Some(t)` asks for the timer again at `t`, for a request due later.
    pub fn timer_fired(&mut self, now: Instant) -> Option<Instant> {
        self.timer = false;
        match self.due {
            Some(d) if d > now => {
                self.timer = true;
                Some(d)
            }
            _ => {
                self.due = None;
                None
            }
        }
    }
}

/// How long an unknown caller must stay unknown before it counts as an orphan: its
/// StasisStart may still be on its way to us.
pub const ORPHAN_GRACE: Duration = Duration::from_millis(1000);

/// One reconciliation, step by step: pure (the Supervisor fetches, adopts, hangs up and
/// destroys; this value decides and counts). The steps, in order:
/// 1. [`Run::new`] when the fetch starts (the watermark: calls numbered from here on began
///    after it);
/// 2. [`Run::fetched`] with Asterisk's lists: what to adopt first ([`crate::adopt::survey`]),
///    then what to end now (vanished calls, orphan media channels and bridges), the adopted
///    calls counted as known;
/// 3. [`Run::cleaned`] with the errors of those deletes: wait [`ORPHAN_GRACE`];
/// 4. [`Run::grace_over`]: the orphan callers that still are no call of ours, to hang up;
/// 5. [`Run::finished`] with the errors of those hang-ups: the report.
#[derive(Debug)]
pub struct Run {
    started: Instant,
    watermark: u64,
    report: ReconcileReport,
    caller_candidates: Vec<String>,
}

/// What [`Run::fetched`] asks for, in this order: adopt, end the vanished calls, hang up the
/// orphan media channels, destroy the orphan bridges.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FirstSteps {
    pub adopt: Vec<Found>,
    /// Our calls not adopted, with why (for the log).
    pub not_adopted: Vec<(String, String)>,
    pub vanished_calls: Vec<String>,
    pub media_orphans: Vec<String>,
    pub bridge_orphans: Vec<String>,
}

/// Asterisk's lists as a reconciliation read them.
#[derive(Debug, Clone, Copy)]
pub struct Lists<'a> {
    pub app: &'a Application,
    pub channels: &'a [Channel],
    pub bridges: &'a [Bridge],
}

impl Run {
    /// A reconciliation whose fetch starts at `started`; `watermark`: the number the next
    /// call will get.
    pub fn new(started: Instant, watermark: u64) -> Self {
        Run { started, watermark, report: ReconcileReport::default(), caller_candidates: Vec::new() }
    }

    /// Calls numbered from here on began after the fetch started: never vanished by it.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// The lists arrived at `now`. `adopt`: where this process sends media (None: adopt
    /// nothing, e.g. while shutting down); `live`: the live calls; `known(id)`: a live call's
    /// caller, externalMedia channel or bridge; `gone(id)`: reported ended since the fetch
    /// began.
    pub fn fetched<'a>(
        &mut self,
        lists: Lists<'_>,
        adopt: Option<&Expect<'_>>,
        live: impl IntoIterator<Item = LiveCall<'a>>,
        known: impl Fn(&str) -> bool,
        gone: impl Fn(&str) -> bool,
        now: Instant,
    ) -> FirstSteps {
        let survey = match adopt {
            Some(e) => crate::adopt::survey(lists.app, lists.channels, lists.bridges, e, &known, gone),
            None => Survey::default(),
        };
        let app = &lists.app.name;
        let adopted: HashSet<String> = survey
            .adopt
            .iter()
            .flat_map(|f| [f.caller_id.clone(), naming::external_media_id(app, &f.caller_id), naming::bridge_id(app, &f.caller_id)])
            .collect();
        let p = plan(lists.app, lists.channels, lists.bridges, live, |id| known(id) || adopted.contains(id));
        self.report = ReconcileReport {
            fetch_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            listed: lists.channels.len() + lists.bridges.len(),
            adopted_calls: survey.adopt.len(),
            vanished_calls: p.vanished_calls.len(),
            orphan_media_channels: p.media_orphans.len(),
            orphan_bridges: p.bridge_orphans.len(),
            ..ReconcileReport::default()
        };
        self.caller_candidates = p.caller_candidates;
        FirstSteps {
            adopt: survey.adopt,
            not_adopted: survey.skipped,
            vanished_calls: p.vanished_calls,
            media_orphans: p.media_orphans,
            bridge_orphans: p.bridge_orphans,
        }
    }

    /// The orphan media channels and bridges are gone (`errors` deletes failed): wait this
    /// long before looking at the orphan callers.
    pub fn cleaned(&mut self, errors: usize) -> Duration {
        self.report.errors += errors;
        ORPHAN_GRACE
    }

    /// The grace is over: the candidates that still are no call of ours (`is_call`), to hang
    /// up.
    pub fn grace_over(&mut self, is_call: impl Fn(&str) -> bool) -> Vec<String> {
        let orphans: Vec<String> = std::mem::take(&mut self.caller_candidates).into_iter().filter(|id| !is_call(id)).collect();
        self.report.orphan_app_channels = orphans.len();
        orphans
    }

    /// The orphan callers were hung up (`errors` failed) at `now`: the report.
    pub fn finished(mut self, errors: usize, now: Instant) -> ReconcileReport {
        self.report.errors += errors;
        self.report.took_ms = now.saturating_duration_since(self.started).as_millis() as u64;
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::{bridge_id, external_media_id};
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
    fn app(name: &str, channels: &[&str], bridges: &[&str]) -> Application {
        serde_json::from_value(json!({"name": name, "channel_ids": channels, "bridge_ids": bridges})).unwrap()
    }
    fn live(caller_id: &str) -> LiveCall<'_> {
        LiveCall { caller_id, setting_up: false, began_after_fetch: false }
    }

    #[test]
    fn a_clean_state_needs_nothing() {
        let (em, br) = (external_media_id("rtpvisor", "a"), bridge_id("rtpvisor", "a"));
        let chans = [channel("a", "Stasis"), channel(&em, "")];
        let p = plan(
            &app("rtpvisor", &["a", &em], &[&br]),
            &chans,
            &[bridge(&br)],
            [live("a")],
            |id| ["a", em.as_str(), br.as_str()].contains(&id),
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn after_a_crash_everything_of_ours_is_an_orphan_once() {
        // A restarted service knows nothing; Asterisk lists the old calls' resources, in
        // both the app's list and the global one.
        let (em, br) = (external_media_id("rtpvisor", "c1"), bridge_id("rtpvisor", "c1"));
        let chans = [channel("c1", "Stasis"), channel("c1-far", "Echo"), channel(&em, ""), channel("someone-else", "Dial")];
        let p = plan(
            &app("rtpvisor", &["c1", "c1-far", &em], &[&br]),
            &chans,
            &[bridge(&br), bridge("not-ours")],
            [],
            |_| false,
        );
        assert_eq!(p.media_orphans, [em]);
        assert_eq!(p.bridge_orphans, [br]);
        assert_eq!(p.caller_candidates, ["c1"], "the Local far half runs dialplan, not Stasis");
        assert!(p.vanished_calls.is_empty());
    }

    #[test]
    fn another_instances_resources_are_never_touched() {
        // Instance "b" shares the Asterisk: its calls, media channels and bridges are listed
        // globally (not in our app) and must survive our reconciliation, even after our crash.
        let (their_em, their_br) = (external_media_id("b", "x1"), bridge_id("b", "x1"));
        let (our_em, our_br) = (external_media_id("a", "y1"), bridge_id("a", "y1"));
        let chans = [channel("x1", "Stasis"), channel(&their_em, ""), channel("y1", "Stasis"), channel(&our_em, "")];
        let p = plan(
            &app("a", &["y1", &our_em], &[&our_br]),
            &chans,
            &[bridge(&their_br), bridge(&our_br)],
            [],
            |_| false,
        );
        assert_eq!(p.media_orphans, [our_em]);
        assert_eq!(p.bridge_orphans, [our_br]);
        assert_eq!(p.caller_candidates, ["y1"]);
        // Unscoped names of earlier versions are nobody's to end either.
        let p = plan(&app("a", &[], &[]), &[channel("rtpvisor-em-2-x1", "")], &[bridge("rtpvisor-br-x1")], [], |_| false);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_call_whose_caller_is_gone_has_vanished_unless_it_is_still_setting_up() {
        let p = plan(
            &app("rtpvisor", &[], &[]),
            &[],
            &[],
            [live("gone"), LiveCall { caller_id: "new", setting_up: true, began_after_fetch: false }],
            |id| id == "gone" || id == "new",
        );
        assert_eq!(p.vanished_calls, ["gone"]);
    }

    #[test]
    fn a_call_that_began_after_the_fetch_is_never_ended() {
        // Its setup finished between the fetch and the plan: the lists predate its caller.
        let p = plan(
            &app("rtpvisor", &[], &[]),
            &[],
            &[],
            [LiveCall { caller_id: "late", setting_up: false, began_after_fetch: true }],
            |id| id == "late",
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn an_app_channel_asterisk_does_not_list_is_still_a_candidate() {
        // The app lists it, the channel list (fetched a moment later) no longer does: it may
        // be a caller; the grace period and the second look decide.
        let p = plan(&app("rtpvisor", &["x"], &[]), &[], &[], [], |_| false);
        assert_eq!(p.caller_candidates, ["x"]);
    }

    #[test]
    fn thousands_of_unrelated_channels_are_read_not_ended() {
        let mut chans: Vec<Channel> = (0..5000).map(|i| channel(&format!("other-{i}"), "Wait")).collect();
        let em = external_media_id("rtpvisor", "c");
        chans.push(channel(&em, ""));
        let t = std::time::Instant::now();
        let p = plan(&app("rtpvisor", &[&em], &[]), &chans, &[], [], |_| false);
        assert_eq!(p.media_orphans, [em]);
        assert!(p.caller_candidates.is_empty() && p.bridge_orphans.is_empty());
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "linear, not quadratic: {:?}", t.elapsed());
    }

    #[test]
    fn at_most_one_runs_and_at_most_one_waits() {
        let mut g = Gate::default();
        assert!(g.request(), "nothing runs: start");
        for _ in 0..10 {
            assert!(!g.request(), "one runs: wait");
        }
        assert!(g.finished(), "the ten requests made meanwhile are served by one run");
        assert!(!g.finished(), "and nothing waits after it");
        assert!(g.request());
    }

    #[test]
    fn delayed_requests_share_one_timer_and_none_is_missed() {
        let t0 = Instant::now();
        let ms = |n| t0 + std::time::Duration::from_millis(n);
        let mut g = Gate::default();
        assert_eq!(g.request_at(ms(3000)), Some(ms(3000)), "first request arms the timer");
        assert_eq!(g.request_at(ms(2000)), None, "an earlier one is served by it");
        assert_eq!(g.request_at(ms(4500)), None, "a later one waits for the timer");
        // Fires at 3 s: one run now, and the timer again for the request due at 4.5 s (a
        // request Asterisk may execute late after the second failure must not be missed).
        assert_eq!(g.timer_fired(ms(3000)), Some(ms(4500)));
        assert_eq!(g.timer_fired(ms(4500)), None, "served; nothing left");
        assert_eq!(g.request_at(ms(9000)), Some(ms(9000)), "idle again: a new request arms it");
    }

    #[test]
    fn a_run_adopts_first_and_never_ends_what_it_adopts() {
        use crate::mode::CallMode;
        use crate::naming::{call_tag, CallTag};
        let t0 = Instant::now();
        // A whole call c1 (adoptable), and the remains of c2: a media channel and a bridge with
        // no caller, and c3, a caller alone in Stasis.
        let (em1, br1) = (external_media_id("rtpvisor", "c1"), bridge_id("rtpvisor", "c1"));
        let (em2, br2) = (external_media_id("rtpvisor", "c2"), bridge_id("rtpvisor", "c2"));
        let mut em1c = channel(&em1, "Stasis");
        em1c.name = "UnicastRTP/127.0.0.1:10005-0x1".into();
        let chans = [channel("c1", "Stasis"), em1c, channel(&em2, "Stasis"), channel("c3", "Stasis")];
        let mut b1 = bridge(&br1);
        b1.name = call_tag(CallTag { mode: CallMode::Echo, port: Some(10005) });
        b1.channels = vec!["c1".into(), em1.clone()];
        let bridges = [b1, bridge(&br2)];
        let a = app("rtpvisor", &["c1", &em1, &em2, "c3"], &[&br1, &br2]);
        let expect = Expect { app: "rtpvisor", media_host: "127.0.0.1", ports: "10000-10100".parse().unwrap(), echo_host: "127.0.0.1", echo_port: 4000 };
        let mut run = Run::new(t0, 1);
        let lists = Lists { app: &a, channels: &chans, bridges: &bridges };
        let first = run.fetched(lists, Some(&expect), [], |_| false, |_| false, t0 + Duration::from_millis(7));
        assert_eq!(first.adopt.iter().map(|f| f.caller_id.as_str()).collect::<Vec<_>>(), ["c1"]);
        assert_eq!(first.media_orphans, [em2]);
        assert_eq!(first.bridge_orphans, [br2]);
        assert!(first.vanished_calls.is_empty());
        assert_eq!(run.cleaned(1), ORPHAN_GRACE);
        // c1 is a call of ours by the time the grace is over; c3 still is no call.
        assert_eq!(run.grace_over(|id| id == "c1"), ["c3"]);
        let r = run.finished(0, t0 + Duration::from_millis(1020));
        assert_eq!(
            (r.adopted_calls, r.orphan_media_channels, r.orphan_bridges, r.orphan_app_channels, r.errors, r.fetch_ms, r.took_ms, r.listed),
            (1, 1, 1, 1, 1, 7, 1020, 6)
        );
        // Without adoption (shutting down), the whole call is an orphan like the rest.
        let mut run = Run::new(t0, 1);
        let first = run.fetched(lists, None, [], |_| false, |_| false, t0);
        assert!(first.adopt.is_empty());
        assert_eq!(first.media_orphans.len(), 2);
        assert_eq!(run.grace_over(|_| false), ["c1", "c3"]);
    }
}
