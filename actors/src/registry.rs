//! The Supervisor's table of live calls: pure, no IO (generic over the handle of each call's
//! actor, so the tests need no actor system).
//!
//! A call is known by its caller's channel id, and by the externalMedia channel and bridge it
//! owns in Asterisk (named after the instance and the caller, [`crate::naming`]): an event about
//! any of the three is routed to the call ([`Registry::route`]), and a reconciliation or an
//! adoption never touches what a live call owns ([`Registry::knows`]). Call numbers count up from
//! 1 for the process's life; they are also the media engine's stream ids.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use serde::Serialize;

use crate::call::CallState;
use crate::mode::CallMode;
use crate::naming::{bridge_id, external_media_id};

/// One live call as the registry knows it (`GET /channels`).
#[derive(Debug, Clone, Serialize)]
pub struct CallInfo {
    /// The call's number: also the media engine's stream id.
    pub call_no: u64,
    /// The caller's ARI channel id.
    pub channel_id: String,
    pub channel_name: String,
    pub mode: CallMode,
    pub state: CallState,
    pub port: Option<u16>,
    /// Asterisk's side of the externalMedia channel (where our RTP goes, and comes from).
    pub asterisk_address: Option<SocketAddr>,
    pub external_media_channel: String,
    pub bridge: String,
    pub age_ms: u64,
    /// Taken over from Asterisk after a restart of rtpvisor (not set up by this process): when
    /// (Unix ms). Its media figures count from then. None for calls this process set up.
    pub adopted_at_ms: Option<u64>,
}

/// Which of a call's resources an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    Caller,
    ExternalMedia,
    Bridge,
}

/// A live call: what is known of it, and its actor.
#[derive(Debug)]
pub struct Entry<A> {
    pub info: CallInfo,
    pub addr: A,
    pub started: Instant,
}

/// The live calls.
#[derive(Debug)]
pub struct Registry<A> {
    app: String,
    calls: HashMap<String, Entry<A>>,
    /// externalMedia channel id and bridge id -> caller id.
    resources: HashMap<String, String>,
    next_call_no: u64,
}

/// A call to register.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub caller_id: String,
    pub caller_name: String,
    pub mode: CallMode,
    pub adopted_at_ms: Option<u64>,
}

impl<A> Registry<A> {
    /// An empty registry for the instance whose Stasis app is `app`.
    pub fn new(app: &str) -> Self {
        Registry { app: app.to_string(), calls: HashMap::new(), resources: HashMap::new(), next_call_no: 1 }
    }

    /// The number the next call will get: calls numbered from here on began after now.
    pub fn watermark(&self) -> u64 {
        self.next_call_no
    }

    /// Registers a call; `start(call_no)` makes its actor. Returns the call number.
    pub fn insert(&mut self, call: NewCall, now: Instant, start: impl FnOnce(u64) -> A) -> u64 {
        let call_no = self.next_call_no;
        self.next_call_no += 1;
        let em = external_media_id(&self.app, &call.caller_id);
        let br = bridge_id(&self.app, &call.caller_id);
        self.resources.insert(em.clone(), call.caller_id.clone());
        self.resources.insert(br.clone(), call.caller_id.clone());
        let info = CallInfo {
            call_no,
            channel_id: call.caller_id.clone(),
            channel_name: call.caller_name,
            mode: call.mode,
            state: CallState::SettingUp,
            port: None,
            asterisk_address: None,
            external_media_channel: em,
            bridge: br,
            age_ms: 0,
            adopted_at_ms: call.adopted_at_ms,
        };
        self.calls.insert(call.caller_id, Entry { info, addr: start(call_no), started: now });
        call_no
    }

    /// Forgets the call of `caller_id` and its resources.
    pub fn remove(&mut self, caller_id: &str) -> Option<Entry<A>> {
        let e = self.calls.remove(caller_id)?;
        self.resources.remove(&e.info.external_media_channel);
        self.resources.remove(&e.info.bridge);
        Some(e)
    }

    pub fn get(&self, caller_id: &str) -> Option<&Entry<A>> {
        self.calls.get(caller_id)
    }

    pub fn get_mut(&mut self, caller_id: &str) -> Option<&mut Entry<A>> {
        self.calls.get_mut(caller_id)
    }

    /// The call that owns this externalMedia channel or bridge.
    pub fn owner_of(&self, resource_id: &str) -> Option<&Entry<A>> {
        self.resources.get(resource_id).and_then(|caller| self.calls.get(caller))
    }

    /// The call an event about channel or bridge `id` concerns, and which of its resources
    /// that is (`is_bridge`: the event names a bridge).
    pub fn route(&self, id: &str, is_bridge: bool) -> Option<(&Entry<A>, Gone)> {
        if let Some(c) = self.calls.get(id) {
            return Some((c, Gone::Caller));
        }
        self.owner_of(id).map(|c| (c, if is_bridge { Gone::Bridge } else { Gone::ExternalMedia }))
    }

    /// True when `id` is a live call's caller, externalMedia channel or bridge.
    pub fn knows(&self, id: &str) -> bool {
        self.calls.contains_key(id) || self.resources.contains_key(id)
    }

    /// The call with this caller id, channel name or call number.
    pub fn find(&self, id: &str) -> Option<&Entry<A>> {
        self.calls.get(id).or_else(|| {
            self.calls.values().find(|c| c.info.channel_name == id || c.info.call_no.to_string() == id)
        })
    }

    pub fn by_call_no(&self, call_no: u64) -> Option<&Entry<A>> {
        self.calls.values().find(|c| c.info.call_no == call_no)
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &Entry<A>> {
        self.calls.values()
    }

    /// Every live call as of `now`, by call number.
    pub fn list(&self, now: Instant) -> Vec<CallInfo> {
        let mut v: Vec<CallInfo> = self
            .calls
            .values()
            .map(|c| CallInfo { age_ms: now.saturating_duration_since(c.started).as_millis() as u64, ..c.info.clone() })
            .collect();
        v.sort_by_key(|c| c.call_no);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> NewCall {
        NewCall { caller_id: id.into(), caller_name: format!("PJSIP/{id}"), mode: CallMode::Echo, adopted_at_ms: None }
    }

    #[test]
    fn events_about_any_resource_of_a_call_reach_it() {
        let t0 = Instant::now();
        let mut r: Registry<&'static str> = Registry::new("app");
        assert_eq!(r.insert(call("c1"), t0, |_| "actor-1"), 1);
        assert_eq!(r.insert(call("c2"), t0, |n| if n == 2 { "actor-2" } else { "?" }), 2);
        assert_eq!(r.watermark(), 3);
        fn route(r: &Registry<&'static str>, id: &str, b: bool) -> Option<(&'static str, Gone)> {
            r.route(id, b).map(|(e, g)| (e.addr, g))
        }
        assert_eq!(route(&r, "c1", false), Some(("actor-1", Gone::Caller)));
        assert_eq!(route(&r, &external_media_id("app", "c2"), false), Some(("actor-2", Gone::ExternalMedia)));
        assert_eq!(route(&r, &bridge_id("app", "c2"), true), Some(("actor-2", Gone::Bridge)));
        assert_eq!(route(&r, &bridge_id("other-app", "c2"), true), None);
        assert!(r.knows(&bridge_id("app", "c1")) && !r.knows("c3"));
        assert_eq!(r.find("PJSIP/c2").map(|e| e.addr), Some("actor-2"));
        assert_eq!(r.find("1").map(|e| e.addr), Some("actor-1"));
        assert_eq!(r.by_call_no(2).map(|e| e.addr), Some("actor-2"));
        let removed = r.remove("c1").unwrap();
        assert_eq!(removed.info.call_no, 1);
        assert!(!r.knows(&external_media_id("app", "c1")) && !r.knows("c1"));
        assert_eq!(r.len(), 1);
        assert_eq!(r.insert(call("c1"), t0, |_| "again"), 3, "numbers are never reused");
    }

    #[test]
    fn the_list_is_ordered_by_call_number_with_ages() {
        let t0 = Instant::now();
        let mut r: Registry<()> = Registry::new("app");
        for id in ["z", "a", "m"] {
            r.insert(call(id), t0, |_| ());
        }
        let list = r.list(t0 + std::time::Duration::from_millis(1500));
        assert_eq!(list.iter().map(|c| c.channel_id.as_str()).collect::<Vec<_>>(), vec!["z", "a", "m"]);
        assert!(list.iter().all(|c| c.age_ms == 1500 && c.adopted_at_ms.is_none()));
    }
}
