//! AriConnection: keeps the ARI events WebSocket open, decodes each event and hands it to the
//! Supervisor. Reconnects with capped exponential backoff and jitter; readiness of the service
//! is read from here (no events, no calls).

use std::time::{Duration, Instant};

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use awc::ws::{Codec, Frame, Message as WsMessage};
use awc::BoxedSocket;
use futures_util::stream::{SplitSink, StreamExt};
use serde::Serialize;

use super::failure::FailureRecord;
use super::metrics::{AriEventCounts, MetricsActor};
use super::supervisor::{AriConnected, AriEvent, Supervisor};
use crate::ari::client::AriClient;
use crate::ari::model::{decode_event, Event};

type WsSink = SplitSink<actix_codec::Framed<BoxedSocket, Codec>, WsMessage>;

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
    /// The last time the connection was lost or could not be made, and why.
    #[serde(skip)]
    pub last_failure: Option<FailureRecord>,
}

pub struct AriConnection {
    ari: AriClient,
    supervisor: Addr<Supervisor>,
    metrics: Addr<MetricsActor>,
    sink: Option<SinkWrite<WsMessage, WsSink>>,
    connected_at: Option<Instant>,
    connects: u64,
    last_error: Option<String>,
    last_failure: Option<FailureRecord>,
    backoff: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl AriConnection {
    pub fn new(
        ari: AriClient,
        supervisor: Addr<Supervisor>,
        metrics: Addr<MetricsActor>,
        backoff_min: Duration,
        backoff_max: Duration,
    ) -> Self {
        AriConnection {
            ari,
            supervisor,
            metrics,
            sink: None,
            connected_at: None,
            connects: 0,
            last_error: None,
            last_failure: None,
            backoff: backoff_min,
            backoff_min,
            backoff_max,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let req = self.ari.events_request();
        // `spawn`, not `wait`: status queries (/ready, /actors) must be answered while a
        // connect attempt hangs on an Asterisk that accepts TCP but does not answer.
        ctx.spawn(async move { req.connect().await }.into_actor(self).map(|res, act, ctx| match res {
            Ok((_resp, framed)) => {
                let (sink, stream) = framed.split();
                act.sink = Some(SinkWrite::new(sink, ctx));
                ctx.add_stream(stream);
                act.connected_at = Some(Instant::now());
                act.connects += 1;
                act.backoff = act.backoff_min;
                // Whatever happened while we were not listening, Asterisk kept: reconcile.
                act.supervisor.do_send(AriConnected { first: act.connects == 1 });
                log::info!("[AriConnection] events WebSocket connected for app {}", act.ari.app());
            }
            Err(e) => {
                act.last_error = Some(e.to_string());
                act.last_failure = Some(FailureRecord::now(format!("connect failed: {e}")));
                log::warn!("[AriConnection] connecting the events WebSocket failed: {e}");
                act.reconnect_later(ctx);
            }
        }));
    }

    fn reconnect_later(&mut self, ctx: &mut Context<Self>) {
        let wait = jittered(self.backoff);
        self.backoff = (self.backoff * 2).min(self.backoff_max);
        log::info!("[AriConnection] reconnecting in {} ms", wait.as_millis());
        ctx.run_later(wait, |act, ctx| act.connect(ctx));
    }

    fn lost(&mut self, why: String, ctx: &mut Context<Self>) {
        if self.connected_at.take().is_some() {
            log::warn!("[AriConnection] events WebSocket lost: {why}");
            self.last_failure = Some(FailureRecord::now(format!("lost: {why}")));
            self.last_error = Some(why);
            self.sink = None;
            self.reconnect_later(ctx);
        }
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

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connect(ctx);
    }
}

impl WriteHandler<awc::error::WsProtocolError> for AriConnection {}

impl StreamHandler<Result<Frame, awc::error::WsProtocolError>> for AriConnection {
    fn handle(&mut self, item: Result<Frame, awc::error::WsProtocolError>, ctx: &mut Context<Self>) {
        match item {
            Ok(Frame::Text(text)) => {
                let mut counts = AriEventCounts { events: 1, ..Default::default() };
                match std::str::from_utf8(&text).map_err(|e| e.to_string()).and_then(|t| {
                    decode_event(t).map_err(|e| e.to_string())
                }) {
                    Ok(Event::Unknown { kind }) => {
                        counts.unknown = 1;
                        log::debug!("[AriConnection] ignoring ARI event of type {kind}");
                    }
                    Ok(ev) => self.supervisor.do_send(AriEvent(ev)),
                    Err(e) => {
                        counts.malformed = 1;
                        log::warn!("[AriConnection] skipping malformed ARI event: {e}");
                    }
                }
                self.metrics.do_send(counts);
            }
            Ok(Frame::Ping(p)) => {
                if let Some(sink) = &mut self.sink {
                    let _ = sink.write(WsMessage::Pong(p));
                }
            }
            Ok(Frame::Close(reason)) => self.lost(format!("closed by Asterisk: {reason:?}"), ctx),
            Ok(_) => {}
            Err(e) => self.lost(format!("protocol error: {e}"), ctx),
        }
    }

    /// The stream ended: do not stop the actor (the default), reconnect instead.
    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.lost("connection closed".into(), ctx);
    }
}

impl Handler<GetAriStatus> for AriConnection {
    type Result = MessageResult<GetAriStatus>;
    fn handle(&mut self, _: GetAriStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(AriStatus {
            connected: self.connected_at.is_some(),
            connects: self.connects,
            last_error: self.last_error.clone(),
            connected_for_ms: self.connected_at.map(|t| t.elapsed().as_millis() as u64),
            last_failure: self.last_failure.clone(),
        })
    }
}
