//! The two baselines the service is measured against, over the same kind of sockets (one UDP
//! socket per channel on 127.0.0.1) and driven by the same generator:
//! - **bare epoll**: one thread, one mio poll over every socket, `recv_from` then `send_to`
//!   until `WouldBlock`. No parsing, no statistics, no actors: the limit of this design.
//! - **naive**: a tokio multi-thread runtime (one worker per core), one task per socket doing
//!   `recv_from(..).await` then `send_to(..).await`: what one writes first.
//!
//! Both are plain echoes: they reflect every datagram to its sender. Their threads are named
//! (`bare-epoll`, `naive-worker`) so the suite can attribute CPU time to them.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

/// A running echo over N sockets.
pub struct EchoBaseline {
    pub addrs: Vec<SocketAddr>,
    stop: Box<dyn FnOnce() + Send>,
}

impl EchoBaseline {
    /// Stops it and closes its sockets.
    pub fn stop(self) {
        (self.stop)();
    }
}

fn bind_n(n: usize) -> io::Result<Vec<UdpSocket>> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect()
}

/// Thread names whose CPU counts as the baseline's.
pub const BARE_THREADS: &[&str] = &["bare-epoll"];
pub const NAIVE_THREADS: &[&str] = &["naive-worker"];

/// One thread, one epoll loop over `n` sockets.
pub fn start_bare(n: usize) -> io::Result<EchoBaseline> {
    let socks = bind_n(n)?;
    let addrs = socks.iter().map(UdpSocket::local_addr).collect::<io::Result<Vec<_>>>()?;
    let poll = Poll::new()?;
    let mut socks: Vec<mio::net::UdpSocket> = socks.into_iter().map(mio::net::UdpSocket::from_std).collect();
    for (i, s) in socks.iter_mut().enumerate() {
        poll.registry().register(s, Token(i), Interest::READABLE)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let join = thread::Builder::new().name("bare-epoll".into()).spawn(move || {
        let mut poll = poll;
        let mut events = Events::with_capacity(1024);
        let mut buf = [0u8; 2048];
        // Bounded by the stop flag, checked at least every 50 ms.
        while !stop_flag.load(Ordering::Relaxed) {
            if poll.poll(&mut events, Some(Duration::from_millis(50))).is_err() {
                continue;
            }
            for ev in events.iter() {
                let s = &socks[ev.token().0];
                loop {
                    match s.recv_from(&mut buf) {
                        Ok((len, from)) => {
                            let _ = s.send_to(&buf[..len], from);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            }
        }
    })?;
    Ok(EchoBaseline {
        addrs,
        stop: Box::new(move || {
            stop.store(true, Ordering::Relaxed);
            let _ = join.join();
        }),
    })
}

/// A tokio runtime with one worker per core and one task per socket.
pub fn start_naive(n: usize) -> io::Result<EchoBaseline> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("naive-worker")
        .enable_io()
        .build()?;
    let socks = bind_n(n)?;
    let addrs = socks.iter().map(UdpSocket::local_addr).collect::<io::Result<Vec<_>>>()?;
    for s in socks {
        let _guard = rt.enter();
        let sock = tokio::net::UdpSocket::from_std(s)?;
        rt.spawn(async move {
            let mut buf = [0u8; 2048];
            // Ends when the runtime shuts down (the task is dropped at an await).
            loop {
                match sock.recv_from(&mut buf).await {
                    Ok((len, from)) => {
                        let _ = sock.send_to(&buf[..len], from).await;
                    }
                    Err(_) => continue,
                }
            }
        });
    }
    Ok(EchoBaseline {
        addrs,
        stop: Box::new(move || rt.shutdown_timeout(Duration::from_secs(2))),
    })
}

/// The minimal blocking echo (the echo's baseline): one thread, one std socket,
/// `recv_from` then `send_to`, blocking.
pub fn start_blocking_echo() -> io::Result<EchoBaseline> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let addr = sock.local_addr()?;
    // Wakes up at least every 50 ms to see the stop flag.
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let join = thread::Builder::new().name("blocking-echo".into()).spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop_flag.load(Ordering::Relaxed) {
            if let Ok((len, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..len], from);
            }
        }
    })?;
    Ok(EchoBaseline {
        addrs: vec![addr],
        stop: Box::new(move || {
            stop.store(true, Ordering::Relaxed);
            let _ = join.join();
        }),
    })
}
