//! EchoActor: owns the shared, stateless echo on UDP 4000 (shared-echo calls point their
//! externalMedia here): its worker threads and their sockets ([`crate::shared_echo`]). A thin
//! shell: every [`TICK`] it has the workers judged and a dead or stalled one restarted in place,
//! within the restart intensity, and hands their counters to the MetricsActor. Past the
//! intensity it stops itself, which the service's watchdog sees as a dead actor: the process
//! escalates (exit 70).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use super::failure::FailureRecord;
use super::metrics::{EchoCounters, MetricsActor};
use crate::shared_echo::{EchoWorkers, Supervised};
use crate::thread_health::Liveness;

/// How often the workers are judged (a dead or stalled one is restarted within this of being
/// found so) and their counters sent on.
pub const TICK: Duration = Duration::from_millis(100);

#[derive(Message)]
#[rtype(result = "EchoStatus")]
pub struct GetEchoStatus;

/// Fault injection (tests only).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum InjectEchoFault {
    /// Every worker panics.
    Panic,
    /// Every worker blocks this long.
    Stall(Duration),
}

/// One worker as `/ready` and `/actors` show it.
#[derive(Debug, Clone, Serialize)]
pub struct EchoWorkerView {
    pub index: usize,
    /// `running`, `stalled for N ms`, `dead: why`.
    pub state: String,
    pub restarts: u64,
    #[serde(skip)]
    pub running: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EchoStatus {
    pub bound: Option<SocketAddr>,
    pub workers: Vec<EchoWorkerView>,
    /// Worker restarts since the start, every worker counted.
    pub restarts: u64,
    pub last_failure: Option<FailureRecord>,
}

impl EchoStatus {
    /// Whether at least one worker answers.
    pub fn answering(&self) -> bool {
        self.bound.is_some() && self.workers.iter().any(|w| w.running)
    }
}

pub struct EchoActor {
    workers: EchoWorkers,
    metrics: Addr<MetricsActor>,
    last_failure: Option<FailureRecord>,
}

impl EchoActor {
    pub fn new(workers: EchoWorkers, metrics: Addr<MetricsActor>) -> Self {
        EchoActor { workers, metrics, last_failure: None }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        for s in self.workers.supervise(Instant::now()) {
            match s {
                Supervised::Restarted { index, reason } => {
                    self.last_failure = Some(FailureRecord::now(format!("worker {index}: {reason}")));
                }
                Supervised::Escalate { reason } => {
                    log::error!("[EchoActor] {reason}: escalating");
                    self.last_failure = Some(FailureRecord::now(reason));
                    ctx.stop();
                }
            }
        }
        self.metrics.do_send(EchoCounters(self.workers.counters()));
    }
}

impl Actor for EchoActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        log::info!("[EchoActor] supervising the shared echo on {}", self.workers.local_addr());
        ctx.run_interval(TICK, |a, ctx| a.tick(ctx));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Signals only: a stalled worker must not hold up the stop.
        self.workers.shutdown(Duration::ZERO);
    }
}

impl Handler<GetEchoStatus> for EchoActor {
    type Result = MessageResult<GetEchoStatus>;
    fn handle(&mut self, _: GetEchoStatus, _: &mut Context<Self>) -> Self::Result {
        let workers = self
            .workers
            .workers(Instant::now())
            .into_iter()
            .map(|w| EchoWorkerView {
                index: w.index,
                state: w.liveness.to_string(),
                restarts: w.restarts,
                running: w.liveness == Liveness::Running,
            })
            .collect();
        MessageResult(EchoStatus {
            bound: Some(self.workers.local_addr()),
            workers,
            restarts: self.workers.restarts(),
            last_failure: self.last_failure.clone(),
        })
    }
}

impl Handler<InjectEchoFault> for EchoActor {
    type Result = ();
    fn handle(&mut self, f: InjectEchoFault, _: &mut Context<Self>) {
        log::warn!("[EchoActor] injected fault: {f:?}");
        match f {
            InjectEchoFault::Panic => self.workers.inject_panic(),
            InjectEchoFault::Stall(d) => self.workers.inject_stall(d),
        }
    }
}
