//! The Supervisor's reconciliations: [`crate::reconcile::Run`] decides each step (adopt, end
//! what is orphaned, after a grace the orphan callers), this does the IO.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::Supervisor;
use crate::actors::call_io;
use crate::actors::channel::EndCall;
use crate::actors::metrics::{EndReason, ReconcileFailed, Reconciled};
use crate::adopt;
use crate::ari::model::{Application, Bridge, Channel, HangupReason};
use crate::call::CallState;
use crate::reconcile;

impl Supervisor {
    /// Looks at Asterisk's side (our app's channels and bridges, every channel and bridge),
    /// adopts the whole calls no process of ours serves, then ends what no live call owns and
    /// the live calls whose caller is gone: [`reconcile::Run`] decides each step, this does the
    /// IO. At most one runs at a time; a request meanwhile makes one more run after it (never
    /// more than one waits). Calls that began after the fetch started are never ended by it.
    pub(super) fn reconcile(&mut self, ctx: &mut Context<Self>) {
        if self.reconcile_gate.request() {
            self.run_reconcile(ctx);
        }
    }

    /// One reconciliation, admitted by the gate.
    fn run_reconcile(&mut self, ctx: &mut Context<Self>) {
        let run = reconcile::Run::new(Instant::now(), self.calls.watermark());
        self.gone_during_fetch = Some(HashSet::new());
        ctx.spawn(call_io::fetch_state(self.ari.clone()).into_actor(self).map(move |res, act, ctx| {
            let gone = act.gone_during_fetch.take().unwrap_or_default();
            match res {
                Ok(state) => act.fetched(run, state, gone, ctx),
                Err(e) => {
                    log::error!("[Supervisor] reconciliation could not read Asterisk's state: {e}");
                    act.metrics.do_send(ReconcileFailed(e.to_string()));
                    act.reconcile_done(ctx);
                }
            }
        }));
    }

    /// Asterisk's lists are in: adopt (never while shutting down), end the vanished calls,
    /// hang up the orphan media channels and destroy the orphan bridges, then look at the
    /// orphan callers after the grace.
    fn fetched(
        &mut self,
        mut run: reconcile::Run,
        (app, channels, bridges): (Application, Vec<Channel>, Vec<Bridge>),
        gone: HashSet<String>,
        ctx: &mut Context<Self>,
    ) {
        let (echo_host, echo_port) = self.settings.echo_target.rsplit_once(':').unwrap_or((&self.settings.echo_target, "0"));
        let expect = adopt::Expect {
            app: self.ari.app(),
            media_host: &self.settings.media_host,
            ports: self.rtp_ports,
            echo_host: echo_host.trim_start_matches('[').trim_end_matches(']'),
            echo_port: echo_port.parse().unwrap_or(0),
        };
        let watermark = run.watermark();
        let live = self.calls.values().map(|c| reconcile::LiveCall {
            caller_id: &c.info.channel_id,
            setting_up: c.info.state == CallState::SettingUp,
            began_after_fetch: c.info.call_no >= watermark,
        });
        let lists = reconcile::Lists { app: &app, channels: &channels, bridges: &bridges };
        let adopt = self.accepting.then_some(&expect);
        let first = run.fetched(lists, adopt, live, |id| self.calls.knows(id), |id| gone.contains(id), Instant::now());
        for (caller, why) in &first.not_adopted {
            log::warn!("[Supervisor] not adopting call {caller}: {why}; the reconciliation ends what is left of it");
        }
        for found in first.adopt {
            self.adopt(found, ctx);
        }
        for id in &first.vanished_calls {
            if let Some(c) = self.calls.get(id) {
                c.addr.do_send(EndCall { reason: EndReason::Vanished, why: "caller vanished while ARI was disconnected" });
            }
        }
        let ari = self.ari.clone();
        let (media, bridges) = (first.media_orphans, first.bridge_orphans);
        let cleanup = async move {
            call_io::hang_up_all(&ari, &media, "orphan", HangupReason::Normal).await + call_io::destroy_all(&ari, &bridges).await
        };
        ctx.spawn(cleanup.into_actor(self).map(move |errors, _, ctx| {
            let grace = run.cleaned(errors);
            ctx.run_later(grace, move |act, ctx| act.end_orphan_callers(run, ctx));
        }));
    }

    /// Hangs up the orphan callers (those that still are no call of ours), then reports.
    fn end_orphan_callers(&mut self, mut run: reconcile::Run, ctx: &mut Context<Self>) {
        let orphans = run.grace_over(|id| self.calls.get(id).is_some());
        for id in &orphans {
            log::info!("Hanging up orphan caller {id} (in our app, no call of ours)");
        }
        let ari = self.ari.clone();
        // Congestion: a caller still ringing (it entered Stasis while no process of ours could
        // answer it, e.g. just before a crash) is refused with 503 cause 34, which a SIP proxy
        // in front retries on another Asterisk; an answered one just gets its BYE.
        let hangups = async move { call_io::hang_up_all(&ari, &orphans, "orphan caller", HangupReason::Congestion).await };
        ctx.spawn(hangups.into_actor(self).map(move |errors, act, ctx| {
            let r = run.finished(errors, Instant::now());
            log::info!(
                "[Supervisor] reconciled in {} ms (fetch of {} channels and bridges {} ms): {} call(s) adopted, {} orphan caller(s), {} orphan media channel(s), {} orphan bridge(s) cleaned, {} vanished call(s) ended, {} error(s)",
                r.took_ms, r.listed, r.fetch_ms, r.adopted_calls, r.orphan_app_channels, r.orphan_media_channels, r.orphan_bridges,
                r.vanished_calls, r.errors
            );
            act.metrics.do_send(Reconciled(r));
            act.reconcile_done(ctx);
        }));
    }

    /// The running reconciliation is over: start the one asked for meanwhile, if any.
    fn reconcile_done(&mut self, ctx: &mut Context<Self>) {
        if self.reconcile_gate.finished() {
            self.run_reconcile(ctx);
        }
    }

    /// A reconciliation no earlier than `delay` from now. One timer at a time: when it fires,
    /// one reconciliation serves every request due by then, and the timer is armed again for
    /// the latest request made meanwhile, if that one is due later.
    pub(super) fn reconcile_later(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(at) = self.reconcile_gate.request_at(Instant::now() + delay) {
            ctx.run_later(at.saturating_duration_since(Instant::now()), Self::reconcile_timer_fired);
        }
    }

    fn reconcile_timer_fired(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if let Some(at) = self.reconcile_gate.timer_fired(now) {
            ctx.run_later(at.saturating_duration_since(now), Self::reconcile_timer_fired);
        }
        self.reconcile(ctx);
    }
}

