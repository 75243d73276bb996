//! EchoActor: the shared, stateless echo on UDP 4000 (shared-echo calls point their
//! externalMedia here). The socket is bound at startup and handed to the media engine, which
//! reflects every datagram to its sender; this actor reports its state.

use std::net::SocketAddr;

use actix::prelude::*;
use serde::Serialize;

#[derive(Message)]
#[rtype(result = "EchoStatus")]
pub struct GetEchoStatus;

#[derive(Debug, Clone, Serialize)]
pub struct EchoStatus {
    pub bound: Option<SocketAddr>,
}

pub struct EchoActor {
    bound: SocketAddr,
}

impl EchoActor {
    pub fn new(bound: SocketAddr) -> Self {
        EchoActor { bound }
    }
}

impl Actor for EchoActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        log::info!("[EchoActor] reflecting UDP on {}", self.bound);
    }
}

impl Handler<GetEchoStatus> for EchoActor {
    type Result = MessageResult<GetEchoStatus>;
    fn handle(&mut self, _: GetEchoStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(EchoStatus { bound: Some(self.bound) })
    }
}
