//! AriConnection: keeps the ARI events link up and hands each event to the Supervisor. It
//! only receives typed items ([`LinkItem`]) from the connection task in [`crate::ari::events`]
//! (which owns the socket, pings it and declares it dead) and keeps the link's status,
//! backoff and the readiness reason ([`LinkState`]). The service is not ready while the link
//! is down: no events, no calls.
//!
//! Every connect attempt has a [`Generation`]; its outcome and every item of its connection
//! are tagged with it, and anything of an old generation is ignored, so a closed connection's
//! late end or event never acts on a newer one.
//!
//! On every loss (closed, protocol error, silent, replaced) the Supervisor is told
//! ([`AriDisconnected`]), and after every connect ([`AriConnected`]) it reconciles.

use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use super::failure::FailureRecord;
use super::metrics::{AriEventCounts, MetricsActor};
use super::supervisor::{AriConnected, AriDisconnected, AriEvent, Supervisor, UndecodableStasisStart};
use crate::ari::client::AriClient;
use crate::ari::events::{event_stream, LinkItem};
use crate::ari::link::{Down, Generation, LinkState};
use crate::ari::liveness::LivenessSettings;
use crate::ari::model::Event;

#[derive(Message)]
#[rtype(result = "AriStatus")]
pub struct GetAriStatus;

#[derive(Debug, Clone, Serialize)]
pub struct AriStatus {
    pub connected: bool,
    /// Successful connects so far (1 after the first; more after reconnects).
    pub connects: u64,
    pub last_error: Option<String>,
    pub connected_for_ms: Option<u64>,
    /// Why not connected (connecting, connect error, closed by Asterisk, silent link, app
    /// taken by another client); `None` while connected.
    pub reason: Option<String>,
    /// The last time the connection was lost or could not be made, and why.
    #[serde(skip)]
    pub last_failure: Option<FailureRecord>,
}

/// An item of connection `generation`.
#[derive(Debug)]
struct Tagged {
    generation: Generation,
    item: LinkItem,
}

pub struct AriConnection {
    ari: AriClient,
    supervisor: Addr<Supervisor>,
    metrics: Addr<MetricsActor>,
    liveness: LivenessSettings,
    state: LinkState,
    /// The current connection's stream, to drop it (and its socket) when we give it up.
    link: Option<SpawnHandle>,
    last_failure: Option<FailureRecord>,
    /// [`TakeApp`] arrived: the first connection was asked for.
    taking: bool,
}

/// Connect the events WebSocket, which registers (takes) our Stasis app: sent once every
/// local resource is held (HTTP, echo, media engine), so that a process that cannot start
/// never takes the app from a healthy instance.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TakeApp;

impl AriConnection {
    /// `backoff_min`/`backoff_max`: the reconnect waits (capped exponential, with jitter);
    /// `liveness`: how often the link is pinged and how long an answer may take
    /// ([`LivenessSettings::default`]: 5 s and 5 s).
    pub fn new(
        ari: AriClient,
        supervisor: Addr<Supervisor>,
        metrics: Addr<MetricsActor>,
        backoff_min: Duration,
        backoff_max: Duration,
        liveness: LivenessSettings,
    ) -> Self {
        AriConnection {
            ari,
            supervisor,
            metrics,
            liveness,
            state: LinkState::new(backoff_min, backoff_max),
            link: None,
            last_failure: None,
            taking: false,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let generation = self.state.attempt();
        let req = self.ari.events_request();
        // `spawn`, not `wait`: status queries (/ready, /actors) must be answered while a
        // connect attempt hangs on an Asterisk that accepts TCP but does not answer.
        ctx.spawn(async move { req.connect().await }.into_actor(self).map(move |res, act, ctx| match res {
            Ok((_resp, framed)) => {
                if !act.state.connected(generation, Instant::now()) {
                    log::debug!("[AriConnection] dropping the late connection of attempt {generation}");
                    return;
                }
                let items = event_stream(framed, act.liveness)
                    .map(move |item| Tagged { generation, item })
                    // Should the task ever end without its terminal item, its end still comes
                    // tagged (and is ignored when that connection is no longer current).
                    .chain(stream::once(async move {
                        Tagged { generation, item: LinkItem::Closed { reason: "event stream ended".into() } }
                    }));
                act.link = Some(ctx.add_stream(items));
                let first = act.state.connects() == 1;
                // Whatever happened while we were not listening, Asterisk kept: reconcile.
                act.supervisor.do_send(AriConnected { first });
                log::info!(
                    "[AriConnection] events WebSocket connected for app {} (generation {generation})",
                    act.ari.app()
                );
            }
            Err(e) => {
                let error = crate::ari::client::describe_ws_error(&e);
                if let Some(wait) = act.state.connect_failed(generation, error.clone()) {
                    act.last_failure = Some(FailureRecord::now(format!("connect failed: {error}")));
                    log::warn!("[AriConnection] connecting the events WebSocket failed: {error}");
                    act.reconnect_later(wait, ctx);
                }
            }
        }));
    }

    fn reconnect_later(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        let wait = jittered(wait);
        log::info!("[AriConnection] reconnecting in {} ms", wait.as_millis());
        ctx.run_later(wait, |act, ctx| act.connect(ctx));
    }

    /// Connection `generation` is down for `why`: drop it, tell the Supervisor, reconnect later.
    fn lost(&mut self, generation: Generation, why: Down, ctx: &mut Context<Self>) {
        let Some(wait) = self.state.lost(generation, why.clone(), Instant::now()) else { return };
        if let Some(link) = self.link.take() {
            ctx.cancel_future(link);
        }
        let reason = why.to_string();
        match why {
            Down::Replaced { .. } => log::error!("[AriConnection] events WebSocket of generation {generation}: {reason}"),
            _ => log::warn!("[AriConnection] events WebSocket of generation {generation} lost: {reason}"),
        }
        self.last_failure = Some(FailureRecord::now(format!("lost: {reason}")));
        self.supervisor.do_send(AriDisconnected { reason });
        self.reconnect_later(wait, ctx);
    }
}

/// Spreads reconnects apart (of several instances, and of one instance's retries): the wait
/// times a factor in [0.5, 1.0), drawn from the wall clock's nanoseconds.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    let frac = 0.5 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(frac)
}

impl Actor for AriConnection {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {}
}

impl Handler<TakeApp> for AriConnection {
    type Result = ();
    fn handle(&mut self, _: TakeApp, ctx: &mut Context<Self>) {
        if !std::mem::replace(&mut self.taking, true) {
            self.connect(ctx);
        }
    }
}

impl StreamHandler<Tagged> for AriConnection {
    fn handle(&mut self, Tagged { generation, item }: Tagged, ctx: &mut Context<Self>) {
        if !self.state.is_current(generation) || !self.state.is_up() {
            log::debug!("[AriConnection] ignoring {item:?} of old connection {generation}");
            return;
        }
        let mut counts = AriEventCounts { events: 1, ..Default::default() };
        match item {
            LinkItem::Event(Event::ApplicationReplaced { application }) => {
                self.lost(generation, Down::Replaced { app: application }, ctx);
            }
            LinkItem::Event(ev) => self.supervisor.do_send(AriEvent(ev)),
            LinkItem::Unknown { kind } => {
                counts.unknown = 1;
                log::debug!("[AriConnection] ignoring ARI event of type {kind}");
            }
            LinkItem::Malformed { error } => {
                counts.malformed = 1;
                log::warn!("[AriConnection] skipping malformed ARI event: {error}");
            }
            LinkItem::BadStasisStart { channel_id, error } => {
                counts.malformed = 1;
                log::warn!("[AriConnection] {error}: answering its caller");
                self.supervisor.do_send(UndecodableStasisStart { channel_id, error });
            }
            LinkItem::Closed { reason } => return self.lost(generation, Down::Closed(reason), ctx),
            LinkItem::Dead { reason } => return self.lost(generation, Down::Silent(reason), ctx),
        }
        self.metrics.do_send(counts);
    }

    /// A connection's stream ended. Its end already came as a tagged item, so this says
    /// nothing (and it may be an old connection's): do not stop the actor (the default).
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<GetAriStatus> for AriConnection {
    type Result = MessageResult<GetAriStatus>;
    fn handle(&mut self, _: GetAriStatus, _: &mut Context<Self>) -> Self::Result {
        let s = self.state.status(Instant::now());
        MessageResult(AriStatus {
            connected: s.connected,
            connects: s.connects,
            last_error: s.last_error,
            connected_for_ms: s.connected_for.map(|d| d.as_millis() as u64),
            reason: s.reason,
            last_failure: self.last_failure.clone(),
        })
    }
}
