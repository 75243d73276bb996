//! PortManager: the one owner of the RTP port pool. A thin shell around the pure
//! [`crate::ports::PortPool`]: it hands out [`Lease`]s and takes ports back when they drop.

use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::ports::{PoolError, PoolSnapshot, PortPool, PortRange};

/// A leased port. Dropping it gives the port back (into quarantine), wherever and however the
/// holder ends, panics included: drop runs on unwind.
#[derive(Debug)]
pub struct Lease {
    port: u16,
    manager: Recipient<Release>,
    /// Set when the holder could not bind the port: it goes to "unavailable", not quarantine.
    unavailable: bool,
}

impl Lease {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port could not be bound (another process holds it): report it so the pool skips it
    /// for a while, and give up the lease.
    pub fn mark_unavailable(mut self) {
        self.unavailable = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.manager.do_send(Release { port: self.port, unavailable: self.unavailable });
    }
}

/// Ask for a port.
#[derive(Message)]
#[rtype(result = "Result<Lease, PoolError>")]
pub struct AcquirePort;

/// Ask for exactly this port (a call taken over from Asterisk keeps its port).
#[derive(Message)]
#[rtype(result = "Result<Lease, PoolError>")]
pub struct AcquireThisPort(pub u16);

/// A lease ended (sent by [`Lease`]'s drop; not sent by hand).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Release {
    pub port: u16,
    pub unavailable: bool,
}

#[derive(Message)]
#[rtype(result = "PoolSnapshot")]
pub struct GetPorts;

pub struct PortManager {
    pool: PortPool,
}

impl PortManager {
    pub fn new(range: PortRange, quarantine: Duration) -> Self {
        // A port another process held is tried again after this long.
        PortManager { pool: PortPool::new(range, quarantine, Duration::from_secs(10)) }
    }

    /// The pool's range.
    pub fn range(&self) -> PortRange {
        self.pool.range()
    }
}

impl Actor for PortManager {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        let snap = self.pool.snapshot(Instant::now());
        log::info!("[PortManager] INFO: managing ports {} ({} ports)", snap.range, snap.size);
    }
}

impl PortManager {
    fn lent(&self, leased: Result<u16, PoolError>, ctx: &mut Context<Self>) -> Result<Lease, PoolError> {
        match leased {
            Ok(port) => {
                log::info!("[PortManager] INFO: Allocated port {port}");
                Ok(Lease { port, manager: ctx.address().recipient(), unavailable: false })
            }
            Err(e) => {
                log::warn!("[PortManager] WARN: no port to lease: {e}");
                Err(e)
            }
        }
    }
}

impl Handler<AcquirePort> for PortManager {
    type Result = Result<Lease, PoolError>;

    fn handle(&mut self, _: AcquirePort, ctx: &mut Context<Self>) -> Self::Result {
        let leased = self.pool.lease(Instant::now());
        self.lent(leased, ctx)
    }
}

impl Handler<AcquireThisPort> for PortManager {
    type Result = Result<Lease, PoolError>;

    fn handle(&mut self, AcquireThisPort(port): AcquireThisPort, ctx: &mut Context<Self>) -> Self::Result {
        let leased = self.pool.lease_exact(port, Instant::now());
        self.lent(leased, ctx)
    }
}

impl Handler<Release> for PortManager {
    type Result = ();

    fn handle(&mut self, msg: Release, _: &mut Context<Self>) {
        let now = Instant::now();
        let result = if msg.unavailable {
            self.pool.mark_unavailable(msg.port, now)
        } else {
            self.pool.release(msg.port, now)
        };
        match result {
            Ok(()) if msg.unavailable => {
                log::warn!("[PortManager] WARN: port {} is held by another process; skipped", msg.port)
            }
            Ok(()) => log::info!("[PortManager] INFO: Released port {}", msg.port),
            Err(e) => log::error!("[PortManager] ERROR: release of port {} refused: {e}", msg.port),
        }
    }
}

impl Handler<GetPorts> for PortManager {
    type Result = MessageResult<GetPorts>;

    fn handle(&mut self, _: GetPorts, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.pool.snapshot(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn snapshot(pm: &Addr<PortManager>) -> PoolSnapshot {
        pm.send(GetPorts).await.unwrap()
    }

    #[actix_rt::test]
    async fn a_dropped_lease_returns_its_port_even_when_its_holder_panics() {
        let pm = PortManager::new(PortRange::new(20000, 20001).unwrap(), Duration::ZERO).start();
        let a = pm.send(AcquirePort).await.unwrap().unwrap();
        let b = pm.send(AcquirePort).await.unwrap().unwrap();
        assert_ne!(a.port(), b.port());
        assert!(matches!(pm.send(AcquirePort).await.unwrap(), Err(PoolError::Exhausted { .. })));

        drop(a);
        let held = std::thread::spawn(move || {
            let _lease = b;
            panic!("a call actor dies holding its lease");
        });
        assert!(held.join().is_err());
        let snap = snapshot(&pm).await;
        assert_eq!((snap.leased, snap.free), (0, 2), "{snap:?}");
        assert_eq!(snap.releases_total, 2);
    }

    #[actix_rt::test]
    async fn an_unbindable_port_is_skipped_not_quarantined() {
        let pm = PortManager::new(PortRange::new(20010, 20011).unwrap(), Duration::from_secs(60)).start();
        let a = pm.send(AcquirePort).await.unwrap().unwrap();
        let port = a.port();
        a.mark_unavailable();
        let snap = snapshot(&pm).await;
        assert_eq!(snap.unavailable_ports, vec![port]);
        assert_eq!(snap.quarantined, 0);
        let b = pm.send(AcquirePort).await.unwrap().unwrap();
        assert_ne!(b.port(), port, "the skipped port is not offered again at once");
    }
}
